"""Trained-drafter machinery on tiny models: losslessness with both kinds, training lowers the loss, exact resume."""

import random

import pytest
import torch

from helpers import tiny_model, worker
from mirrorspec.orchestration.engine import Engine
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.training import data, trainer
from mirrorspec.training.trainer import TrainConfig, multipass_mask, train
from mirrorspec.workers.drafter_model import Drafter, DrafterWorker, new_drafter

VOCAB = 80
ARCH = {
    "token": dict(layers=2, hidden=16, heads=2, kv_heads=1, intermediate=32),
    "feature": dict(layers=1, hidden=32, heads=4, kv_heads=2, intermediate=64),
}


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", VOCAB, seed=4, sharpness=5.0)


def prompts(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randint(2, 12))] for _ in range(n)]


def make_drafter(kind, target, seed=0):
    """`kind`: token, feature, or fused (a feature drafter that also reads the target's state after layer 1, with
    a random fuse, so that every block of the wide features matters)."""
    torch.manual_seed(seed)
    arch = ARCH["feature" if kind == "fused" else kind]
    drafter = new_drafter("feature" if kind == "fused" else kind, target.model, list(range(0, VOCAB, 2)) + [1, 3, 5],
                          **arch, feature_layers=[1] if kind == "fused" else None)  # a partial vocabulary
    if kind == "fused":
        torch.nn.init.normal_(drafter.fuse.weight, std=0.2)
    return drafter


def engine_with(target, drafter, batch=4):
    return Engine(worker(target, batch, 200, 32), DrafterWorker(drafter, max_slots=batch, capacity=200,
                                                                max_spec_nodes=32),
                  max_model_len=160, max_batch=batch, max_spec_nodes=32)


def test_a_one_token_prompt_waits_for_a_hidden_state_without_failing_the_feature_drafter(target):
    """A one-token prompt has no prefill, so no target hidden state yet: it drafts from its second step on,
    and the other sequences in the batch keep their drafter."""
    ps = [[5], [3, 4, 5, 6]]
    sampling = SamplingParams(max_new_tokens=10, ignore_eos=True)
    ar = [o.token_ids for o in Engine(worker(target), max_model_len=160).generate(ps, sampling)]
    engine = engine_with(target, make_drafter("feature", target))
    outs = engine.generate(ps, sampling, SpecParams(method="chain", gamma=3))
    assert [o.token_ids for o in outs] == ar
    assert engine.scheduler.drafter_failures == 0 and all(o.stats.fallback_steps == 0 for o in outs)
    assert all(o.stats.drafts > 0 for o in outs)


@pytest.fixture(scope="module")
def responses(target):
    ar = Engine(worker(target, 16, 200, 8), max_model_len=160, max_batch=16)
    rows = [{"category": "x", "prompt": p} for p in prompts(48, seed=1)]
    outs = ar.generate([r["prompt"] for r in rows], SamplingParams(max_new_tokens=24, ignore_eos=True))
    return [{"prompt_ids": r["prompt"], "answer_ids": o.token_ids} for r, o in zip(rows, outs)]


@pytest.fixture(scope="module")
def labelled(target, responses, tmp_path_factory):
    """Self-distillation data from the tiny target, through the real data pipeline."""
    folder = tmp_path_factory.mktemp("data")
    data.label_sequences(target.model, responses, folder, shard_size=20)
    return data.load_shards(folder)


@pytest.fixture(scope="module")
def labelled_fused(target, responses, tmp_path_factory):
    """The same, with the target's state after layer 1 before its final state (a fused drafter's data)."""
    folder = tmp_path_factory.mktemp("data")
    data.label_sequences(target.model, responses, folder, layers=[1], shard_size=20)
    return data.load_shards(folder, [1])


def test_labels_keep_the_responses_order_and_match_labelling_each_alone(target, tmp_path):
    """Batches are formed by length, but a shard lists its examples in the order of the responses."""
    rng = random.Random(5)
    responses = [{"prompt_ids": p, "answer_ids": [rng.randrange(VOCAB) for _ in range(rng.randint(1, 20))]}
                 for p in prompts(7, seed=4)]
    data.label_sequences(target.model, responses, tmp_path / "batched", shard_size=5, batch=3)
    data.label_sequences(target.model, responses, tmp_path / "alone", shard_size=5, batch=1)
    batched, alone = data.load_shards(tmp_path / "batched"), data.load_shards(tmp_path / "alone")
    assert [e.ids.tolist() for e in batched] == [r["prompt_ids"] + r["answer_ids"] for r in responses]
    for b, a in zip(batched, alone):
        assert b.prompt_len == a.prompt_len and b.top_ids.shape == a.top_ids.shape
        torch.testing.assert_close(b.features, a.features, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("kind", ["token", "feature", "fused"])
@pytest.mark.parametrize("spec", [SpecParams(method="chain", gamma=4),
                                  SpecParams(method="tree", tree_depth=3, tree_topk=3, tree_nodes=8)],
                         ids=["chain", "tree"])
def test_trained_drafter_kinds_stay_lossless(target, kind, spec):
    ps = prompts(6)
    sampling = SamplingParams(max_new_tokens=18, ignore_eos=True)
    ar = [o.token_ids for o in Engine(worker(target), max_model_len=160).generate(ps, sampling)]
    outs = engine_with(target, make_drafter(kind, target)).generate(ps, sampling, spec)
    assert [o.token_ids for o in outs] == ar
    assert sum(o.stats.drafted for o in outs) > 0


@pytest.mark.parametrize("kind", ["feature", "fused"])
def test_save_and_load_round_trip(target, kind, tmp_path):
    drafter = make_drafter(kind, target)
    drafter.save(tmp_path)
    loaded = Drafter.load(tmp_path)
    assert loaded.meta == drafter.meta
    for (name, a), (_, b) in zip(drafter.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_multipass_mask_matches_inference_attention():
    m = multipass_mask(5, 3)
    # pass 1 is causal
    assert m[:5, :5].equal(torch.tril(torch.ones(5, 5, dtype=torch.bool)))
    # pass 3 at position 4: pass-1 keys 0..2, pass-2 key at 3, pass-3 key at 4
    row = m[10 + 4].view(3, 5)
    assert row[0].tolist() == [True, True, True, False, False]
    assert row[1].tolist() == [False, False, False, True, False]
    assert row[2].tolist() == [False, False, False, False, True]


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["token", "feature", "fused"])
def test_training_lowers_the_distillation_loss(target, kind, matmul_dtype, tmp_path, request):
    labelled = request.getfixturevalue("labelled_fused" if kind == "fused" else "labelled")
    drafter = make_drafter(kind, target)
    cfg = TrainConfig(steps=40, batch_size=4, lr=1e-2, warmup=5, eval_every=40, checkpoint_every=40, passes=2,
                      matmul_dtype=matmul_dtype)
    before = _eval_loss(drafter, labelled, cfg)
    train(drafter, labelled[4:], labelled[:4], cfg, tmp_path)
    assert _eval_loss(drafter, labelled, cfg) < before - 0.1
    assert all(p.dtype == torch.float32 for p in drafter.parameters())  # only the products ran in bf16


def test_a_bad_matmul_dtype_is_refused_by_name(target, labelled, tmp_path):
    from mirrorspec.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="matmul_dtype"):
        train(make_drafter("token", target), labelled, labelled[:2], TrainConfig(steps=1, matmul_dtype="int3"),
              tmp_path)


def test_init_starts_from_a_trained_drafter_and_refuses_another_kind(target, tmp_path):
    import argparse

    from mirrorspec.errors import InvalidRequestError
    from mirrorspec.training.train_drafter import _initial_drafter

    make_drafter("feature", target, seed=3).save(tmp_path / "feature")
    args = argparse.Namespace(init=str(tmp_path / "feature"), kind="feature", feature_layers=[])
    start = _initial_drafter(args, target, responses=[])
    saved = Drafter.load(tmp_path / "feature")
    assert start.meta == saved.meta
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), saved.state_dict().values()))
    with pytest.raises(InvalidRequestError, match="init"):
        _initial_drafter(argparse.Namespace(init=str(tmp_path / "feature"), kind="token", feature_layers=[]),
                         target, [])
    with pytest.raises(InvalidRequestError, match="feature_layers"):  # the tiny target has 2 layers
        _initial_drafter(argparse.Namespace(init=str(tmp_path / "feature"), kind="feature", feature_layers=[2]),
                         target, [])


def test_added_feature_layers_start_by_drafting_as_before(target):
    """--init with --feature-layers: the new fuse picks the final state, so the drafter's inputs are unchanged
    (then training moves it)."""
    drafter = make_drafter("feature", target)
    ids = torch.tensor([[3, 7, 9]])
    final, layer1 = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    before = drafter.input_embeds(ids, final)
    drafter.add_feature_layers([1])
    assert drafter.meta.feature_layers == [1] and drafter.meta.feature_width == 64
    assert torch.equal(drafter.input_embeds(ids, torch.cat([layer1, final], -1)), before)
    assert torch.equal(drafter.input_embeds(ids, final), before)  # its own (narrow) states pass through
    with pytest.raises(ValueError):
        drafter.add_feature_layers([1])


def test_the_target_returns_the_layer_states_the_labels_hold(target, tmp_path):
    """What a fused drafter reads at inference (the target worker's forward_hidden) is what it was trained on
    (the labels), and the target's logits do not change."""
    ids = prompts(1, seed=6)[0] + [4, 8, 15]
    plain = worker(target)
    wide = worker(target)
    wide.set_output_layers([1])
    for w in (plain, wide):
        w.open(0)
    logits, hidden = plain.forward_hidden([0], [ids])
    wide_logits, wide_hidden = wide.forward_hidden([0], [ids])
    assert torch.equal(wide_logits[0], logits[0])
    assert wide_hidden[0].shape == (len(ids), 64) and torch.equal(wide_hidden[0][:, 32:], hidden[0])
    assert torch.equal(wide.logits(wide_hidden[0]), plain.logits(hidden[0]))
    responses = [{"prompt_ids": ids[:4], "answer_ids": ids[4:]}]
    data.label_sequences(target.model, responses, tmp_path, layers=[1])
    data.label_sequences(target.model, responses, tmp_path)  # final state only: its own shards
    [fused], [final] = data.load_shards(tmp_path, [1]), data.load_shards(tmp_path)
    torch.testing.assert_close(fused.features.float(), wide_hidden[0], atol=2e-2, rtol=1e-2)
    assert torch.equal(fused.features[:, 32:], final.features)
    assert not torch.allclose(fused.features[:, :32], final.features, atol=0.1)  # layer 1 is not the final state
    from mirrorspec.errors import InvalidRequestError
    with pytest.raises(InvalidRequestError, match="feature_layers"):
        wide.set_output_layers([2])


def test_a_fused_drafter_over_grpc_tells_the_target_its_layers_and_stays_lossless(target):
    from mirrorspec.orchestration.drafter_session import DrafterSession
    from mirrorspec.speculation.drafter_server import serve
    from mirrorspec.speculation.remote_drafter import RemoteDrafter

    drafter = DrafterWorker(make_drafter("fused", target), max_slots=4, capacity=200, max_spec_nodes=32)
    server, address = serve(DrafterSession(drafter, max_spec_nodes=32), vocab_size=VOCAB,
                            feature_size=drafter.feature_width, secret="s")
    try:
        remote = RemoteDrafter(address, vocab_size=VOCAB, secret="s")
        assert remote.feature_layers == (1,) and remote.feature_size == 64
        ps = prompts(4, seed=2)
        sampling = SamplingParams(max_new_tokens=16, ignore_eos=True)
        ar = [o.token_ids for o in Engine(worker(target), max_model_len=160).generate(ps, sampling)]
        engine = Engine(worker(target, 4, 200, 32), remote, max_batch=4, max_model_len=160)
        outs = engine.generate(ps, sampling, SpecParams(method="chain", gamma=3))
        assert [o.token_ids for o in outs] == ar
        assert engine.scheduler.drafter_failures == 0 and sum(o.stats.drafted for o in outs) > 0
        remote.close()
    finally:
        server.stop(0)


def test_a_drafter_names_why_it_cannot_serve_another_target(target):
    from types import SimpleNamespace

    meta = make_drafter("feature", target).meta
    config = target.model.config
    assert meta.mismatch(config) is None
    other_vocab = SimpleNamespace(vocab_size=config.vocab_size + 1, hidden_size=config.hidden_size)
    assert "vocabulary" in meta.mismatch(other_vocab)
    other_width = SimpleNamespace(vocab_size=config.vocab_size, hidden_size=config.hidden_size * 2,
                                  num_hidden_layers=config.num_hidden_layers)
    assert "hidden states" in meta.mismatch(other_width)
    shallower = SimpleNamespace(vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=1)
    assert meta.mismatch(shallower) is None and "layers" in make_drafter("fused", target).meta.mismatch(shallower)
    assert make_drafter("token", target).meta.mismatch(other_width) is None  # token drafters take no states


def test_resume_equals_an_uninterrupted_run(target, labelled, tmp_path, monkeypatch):
    cfg = TrainConfig(steps=12, batch_size=3, lr=3e-3, warmup=2, eval_every=6, checkpoint_every=6, passes=2)
    whole = make_drafter("feature", target, seed=7)
    train(whole, labelled, labelled[:3], cfg, tmp_path / "whole")

    save = trainer._save_checkpoint

    def crash_after_first_checkpoint(path, drafter, opt, step, history):
        save(path, drafter, opt, step, history)
        raise KeyboardInterrupt  # the run is killed right after step 6 is on disk

    monkeypatch.setattr(trainer, "_save_checkpoint", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(make_drafter("feature", target, seed=7), labelled, labelled[:3], cfg, tmp_path / "resumed")
    monkeypatch.undo()
    fresh = make_drafter("feature", target, seed=99)  # different init: everything must come from the checkpoint
    train(fresh, labelled, labelled[:3], cfg, tmp_path / "resumed")
    for (name, a), (_, b) in zip(whole.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def _eval_loss(drafter, examples, cfg):
    from mirrorspec.training.trainer import evaluate

    stats = evaluate(drafter, examples, cfg)
    return stats["loss"]


def test_token_drafter_runs_as_transformers_assistant(target, tmp_path):
    """The bench's hf-assisted baseline runs the same token drafter inside transformers' assisted generation."""
    from mirrorspec.bench.hf_assistant import draft_vocab_assistant

    make_drafter("token", target).save(tmp_path)
    assistant = draft_vocab_assistant(str(tmp_path), torch.float32, torch.device("cpu"))
    ids = torch.tensor([prompts(1, seed=3)[0]])
    logits = assistant(input_ids=ids).logits[0, -1]
    drafted = torch.isfinite(logits).nonzero().flatten().tolist()
    assert drafted == sorted(set(range(0, VOCAB, 2)) | {1, 3, 5})  # only draft-vocabulary tokens are proposed
    kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
    plain = target.model.generate(ids, **kwargs)
    assisted = target.model.generate(ids, assistant_model=assistant, **kwargs)
    assert assisted.tolist() == plain.tolist()


def test_extra_data_folders_join_training_and_keep_their_own_held_out_split(target, responses, tmp_path):
    """--extra-data: each folder's held-out set is the one it has alone, never trained on; a folder without
    labels for the drafter's layers is refused by name."""
    from mirrorspec.errors import InvalidRequestError
    from mirrorspec.training.train_drafter import _splits

    own, extra, unlabelled = tmp_path / "own", tmp_path / "extra", tmp_path / "unlabelled"
    for layers in ([], [1]):
        data.label_sequences(target.model, responses[:30], own, shard_size=20, layers=layers)
    data.label_sequences(target.model, responses[30:], extra, shard_size=20)
    alone = _splits(own, [], [], 25, eval_fraction=0.2)
    both = _splits(own, [extra], [], 25, eval_fraction=0.2)
    assert list(both) == [str(own), str(extra)]
    key = lambda examples: [tuple(e.ids.tolist()) for e in examples]  # noqa: E731
    assert key(both[str(own)][1]) == key(alone[str(own)][1])
    assert len(both[str(own)][0]) + len(both[str(own)][1]) == 25  # the run's own folder is capped at --prompts
    assert len(both[str(extra)][0]) + len(both[str(extra)][1]) == 18  # an extra folder gives all it has
    train_keys = set(key(both[str(own)][0] + both[str(extra)][0]))
    assert not train_keys & set(key(both[str(own)][1] + both[str(extra)][1]))
    with pytest.raises(InvalidRequestError, match="extra_data"):
        _splits(own, [unlabelled], [], 25, eval_fraction=0.2)
    with pytest.raises(InvalidRequestError, match="extra_data"):  # labels for other layers do not count
        _splits(own, [extra], [1], 25, eval_fraction=0.2)
