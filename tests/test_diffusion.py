"""Masked-diffusion decoding on tiny random dLLMs: batch invariance, EOS truncation, streaming, bad parameters."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import transformers

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.diffusion import DiffusionDecoder
from mirrorspec.orchestration.outputs import RequestOutput
from mirrorspec.orchestration.stats import RequestStats
from mirrorspec.params import DiffusionParams
from mirrorspec.training.dllm import HELD_OUT, HELD_OUT_SEED, TaskCodec, evaluate
from mirrorspec.training.synthetic_tasks import examples
from mirrorspec.workers.diffusion_model import ContextKV, DiffusionLM, DllmMeta, load_dllm, save_dllm

VOCAB = 64
MASK = VOCAB - 1
PROMPTS = [[1, 2, 7, 9, 11], [4, 8, 15, 16, 23, 42, 10, 30, 31], [6], [12, 13]]


def tiny_dllm(seed: int = 0, sharpness: float = 6.0, shifted: bool = False) -> DiffusionLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)  # peaked distributions, as a trained model's are
    return DiffusionLM(model, DllmMeta(mask_token_id=MASK, shifted=shifted), own=True)


SETTINGS = {
    "low-confidence": DiffusionParams("low-confidence", gen_length=16, block_length=8, steps=8),
    "random": DiffusionParams("random", gen_length=16, block_length=4, steps=16),
    "threshold": DiffusionParams("threshold", gen_length=16, block_length=8, threshold=0.5),
    "factor": DiffusionParams("factor", gen_length=16, block_length=16, factor=2.0),
    "adaptive+early+sampled": DiffusionParams("threshold", gen_length=24, block_length=8, threshold=0.6,
                                              adaptive_blocks=True, early_commit=True, temperature=0.8, seed=5),
}


# Every strategy uncached; the caches with a fixed schedule and with the adaptive rules (blocks of unequal length).
CACHED = [(name, "none") for name in SETTINGS] + [(name, cache) for name in ("low-confidence", "adaptive+early+sampled")
                                                  for cache in ("prefix", "dual")]


@pytest.mark.parametrize("name, cache", CACHED)
@pytest.mark.parametrize("shifted", [False, True])
def test_a_sequence_decodes_the_same_alone_and_in_any_batch(name, cache, shifted):
    decoder = DiffusionDecoder(tiny_dllm(shifted=shifted), eos_ids=(3,), delimiter_ids=(5, 9))
    params = dataclasses.replace(SETTINGS[name], cache=cache)
    alone = [decoder.generate([p], params)[0] for p in PROMPTS]
    together = decoder.generate(PROMPTS, params)
    reordered = decoder.generate(PROMPTS[::-1], params)[::-1]
    for a, t, r in zip(alone, together, reordered):
        assert a.token_ids == t.token_ids == r.token_ids
        assert a.forwards == t.forwards == r.forwards  # the same schedule too, not only the same tokens
    for out in alone:
        assert 1 <= len(out.token_ids) <= params.gen_length and MASK not in out.token_ids


def test_fixed_schedule_takes_exactly_its_steps_and_threshold_takes_fewer():
    decoder = DiffusionDecoder(tiny_dllm(sharpness=20.0))
    for steps in (32, 16):
        fixed = decoder.generate(PROMPTS, DiffusionParams("low-confidence", gen_length=32, block_length=8,
                                                          steps=steps, stop_at_eos=False))
        assert all(o.forwards == steps and len(o.token_ids) == 32 for o in fixed)
    # A threshold the random model's confidences often pass: several tokens per forward.
    fast = decoder.generate(PROMPTS, DiffusionParams("threshold", gen_length=32, block_length=8, threshold=0.2,
                                                     stop_at_eos=False))
    assert all(len(o.token_ids) == 32 for o in fast)
    assert all(o.forwards < 32 for o in fast)


def test_eos_ends_the_sequence_and_saves_forwards():
    model = tiny_dllm(seed=3)
    params = DiffusionParams("low-confidence", gen_length=32, block_length=8, steps=32)
    plain = DiffusionDecoder(model).generate(PROMPTS, params)
    # A token the model really produces, in the middle of an answer, serves as EOS.
    eos = plain[0].token_ids[len(plain[0].token_ids) // 2]
    cut = DiffusionDecoder(model, eos_ids=(eos,)).generate(PROMPTS, params)
    for before, after in zip(plain, cut):
        if after.finish_reason == "eos":
            assert after.token_ids[-1] == eos and eos not in after.token_ids[:-1]
            assert after.forwards <= before.forwards
        else:
            assert eos not in after.token_ids and len(after.token_ids) == 32
    assert cut[0].finish_reason == "eos" and len(cut[0].token_ids) < 32


def test_streaming_yields_the_committed_blocks_in_order():
    decoder = DiffusionDecoder(tiny_dllm(seed=1), eos_ids=(3,))
    params = DiffusionParams("threshold", gen_length=24, block_length=8, threshold=0.5)
    blocks = list(decoder.stream(PROMPTS[1], params))
    whole = decoder.generate([PROMPTS[1]], params)[0]
    assert [t for b in blocks for t in b] == whole.token_ids
    assert all(len(b) == 8 for b in blocks[:-1])


@pytest.mark.parametrize("params, field", [
    (dict(gen_length=30, block_length=8), "block_length"),
    (dict(strategy="low-confidence", steps=0), "steps"),
    (dict(strategy="low-confidence", gen_length=32, block_length=8, steps=6), "steps"),  # 6 steps over 4 blocks
    (dict(strategy="low-confidence", gen_length=8, block_length=8, steps=9), "steps"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(strategy="beam"), "strategy"),
    (dict(strategy="low-confidence", adaptive_blocks=True), "adaptive_blocks"),
    (dict(temperature=-1.0), "temperature"),
    (dict(cache="paged"), "cache"),
])
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(InvalidRequestError, match=f"^{field}:"):
        DiffusionDecoder(tiny_dllm()).generate(PROMPTS[:1], DiffusionParams(**params))


def test_an_empty_prompt_is_refused():
    with pytest.raises(InvalidRequestError, match="^prompt:"):
        DiffusionDecoder(tiny_dllm()).generate([[]], DiffusionParams())


def test_only_diffusion_models_load(tmp_path):
    model = tiny_dllm()
    save_dllm(model.model, model.meta, tmp_path / "dllm")
    loaded = load_dllm(str(tmp_path / "dllm"))
    ids, valid = torch.tensor([[1, 2, MASK]]), torch.ones(1, 3, dtype=torch.bool)
    assert torch.allclose(loaded.logits(ids, valid)[0], model.logits(ids, valid)[0], atol=1e-5)
    # An ordinary causal LM folder is not a diffusion model.
    model.model.save_pretrained(tmp_path / "causal")
    with pytest.raises(InvalidRequestError, match="^target: .* is not a masked-diffusion model"):
        load_dllm(str(tmp_path / "causal"))
    # A LLaDA folder runs its own code: refused unless trusted.
    (tmp_path / "llada").mkdir()
    (tmp_path / "llada" / "config.json").write_text(json.dumps({"model_type": "llada"}))
    with pytest.raises(InvalidRequestError, match="^trust_remote_code: .*--trust-remote-code"):
        load_dllm(str(tmp_path / "llada"))


@pytest.mark.parametrize("shifted", [False, True])
def test_the_cached_forward_is_the_full_forward_split_in_two(shifted):
    """A forward over a canvas's second half, attending to K/V the full forward computed for the first half, gives
    the full forward's logits: the cache path itself is exact; only reusing stale K/V approximates."""
    model = tiny_dllm(shifted=shifted)
    ids = torch.tensor([[1, 2, 7, 9, 11, MASK, MASK, 4, MASK, MASK]])
    full, _ = model.logits(ids, torch.ones_like(ids, dtype=torch.bool))
    positions = torch.arange(10)[None]
    _, _, kv = model.logits_in_context(ids, positions, torch.ones(1, 10, 10, dtype=torch.bool))
    context = ContextKV(kv.keys[..., :5, :], kv.values[..., :5, :], torch.ones(1, 5, dtype=torch.bool))
    half, _, _ = model.logits_in_context(ids[:, 5:], positions[:, 5:], torch.ones(1, 5, 5, dtype=torch.bool), context)
    finite = torch.isfinite(full[:, 5 + shifted:])  # the mask column is -inf in both
    assert torch.allclose(half[:, shifted:][finite], full[:, 5 + shifted:][finite], atol=1e-5)


def test_a_cached_block_recomputes_only_its_own_positions():
    """Each block's first step runs the whole canvas (5 prompt + 16 masks); later steps run the block and the
    masked suffix (prefix cache) or the block alone (dual cache)."""
    model = tiny_dllm(seed=2)
    params = DiffusionParams("low-confidence", gen_length=16, block_length=8, steps=4, stop_at_eos=False)
    widths = []
    forward = model.logits_in_context
    model.logits_in_context = lambda ids, *a, **k: widths.append(ids.shape[1]) or forward(ids, *a, **k)
    for cache, expected in (("prefix", [21, 16, 21, 8]), ("dual", [21, 8, 21, 8])):
        widths.clear()
        out = DiffusionDecoder(model).generate([PROMPTS[0]], dataclasses.replace(params, cache=cache))[0]
        assert widths == expected and out.forwards == 4 and len(out.token_ids) == 16


def test_a_cache_needs_a_model_this_runner_can_feed_context():
    remote_like = DiffusionLM(tiny_dllm().model, DllmMeta(mask_token_id=MASK), own=False)
    with pytest.raises(InvalidRequestError, match="^cache:"):
        DiffusionDecoder(remote_like).generate(PROMPTS[:1], DiffusionParams(cache="prefix"))


def test_attention_is_bidirectional():
    """A masked position's prediction depends on the tokens after it (it would not under causal attention)."""
    model = tiny_dllm()
    valid = torch.ones(1, 4, dtype=torch.bool)
    a = model.logits(torch.tensor([[1, MASK, 5, 6]]), valid)[0][0, 1]
    b = model.logits(torch.tensor([[1, MASK, 7, 8]]), valid)[0][0, 1]
    assert not torch.allclose(a, b)


@pytest.fixture(scope="module")
def dllm_folder(tmp_path_factory):
    """A tiny random dLLM over SmolLM2's tokenizer, saved as a model folder."""
    from mirrorspec.workers.models import ensure_default_model, load_tokenizer

    tokenizer = load_tokenizer(ensure_default_model())
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    folder = tmp_path_factory.mktemp("dllm") / "tiny"
    save_dllm(transformers.LlamaForCausalLM(config), DllmMeta(mask_token_id=len(tokenizer) - 1), folder, tokenizer)
    return str(folder)


@pytest.mark.real_model
def test_cli_generates_with_a_diffusion_model(dllm_folder, capsys):
    from mirrorspec.cli.main import main

    assert main(["generate", "Count to five.", "--chat", "--method", "diffusion", "--target", dllm_folder,
                 "--strategy", "low-confidence", "--max-new-tokens", "16", "--block-length", "8", "--steps", "8",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "diffusion" and 1 <= len(out["token_ids"]) <= 16
    assert out["stats"]["target_forwards"] <= 8  # 8 steps, fewer if EOS ended it
    # The schema of the other methods' --json (RequestOutput.to_dict), tau being tokens per forward.
    assert set(out) == {"method", *RequestOutput("", [], "", [], True, "length", RequestStats()).to_dict()}
    assert set(RequestStats().as_dict()) < set(out["stats"]) and sum(out["stats"]["blocks"]) == len(out["token_ids"])
    assert out["stats"]["tau"] == round(len(out["token_ids"]) / out["stats"]["target_forwards"], 4)
    assert main(["generate", "Count to five.", "--method", "diffusion", "--target", dllm_folder,
                 "--max-new-tokens", "16", "--block-length", "8"]) == 0
    assert "[diffusion] " in capsys.readouterr().err  # the stats line, as for the other methods
    assert main(["generate", "Count to five.", "--method", "diffusion", "--target", dllm_folder,
                 "--max-new-tokens", "16", "--block-length", "8", "--stream"]) == 0


@pytest.mark.real_model
def test_a_prompt_outside_a_task_models_vocabulary_is_noted(capsys):
    from mirrorspec.cli.main import main

    task_model = str(Path(__file__).parents[1] / "drafters" / "smollm2-tasks-dllm")
    assert main(["generate", "Sort: 3 1 2", "--method", "diffusion", "--target", task_model,
                 "--max-new-tokens", "16"]) == 0
    assert "outside this model's" not in capsys.readouterr().err
    assert main(["generate", "Why is the sky blue?", "--method", "diffusion", "--target", task_model,
                 "--max-new-tokens", "16"]) == 0
    assert "tokens are outside this model's 21-token vocabulary" in capsys.readouterr().err


@pytest.mark.real_model
@pytest.mark.parametrize("extra, field", [
    ([], "target"),  # the default target is an AR model
    (["--block-length", "5"], "block_length"),
    (["--threshold", "0"], "threshold"),
])
def test_cli_diffusion_errors_name_the_field(dllm_folder, extra, field, capsys):
    from mirrorspec.cli.main import main

    target = [] if field == "target" else ["--target", dllm_folder]
    assert main(["generate", "hi", "--method", "diffusion", "--max-new-tokens", "16", *target, *extra]) == 2
    assert f"error: {field}:" in capsys.readouterr().err


@pytest.mark.real_model
def test_train_dllm_then_bench_it(tmp_path):
    """A few training steps end to end (the shipped model's command is in its training_report.json), then the
    speed-quality bench over two settings."""
    from mirrorspec.cli.main import main

    folder = tmp_path / "dllm"
    assert main(["train-dllm", "--out", str(folder), "--steps", "3", "--batch", "8", "--eval-every", "3",
                 "--threads", "1"]) == 0
    report = json.loads((folder / "training_report.json").read_text())
    assert report["history"][-1]["step"] == 3
    model = load_dllm(str(folder))
    assert model.meta.vocab and model.vocab_size == len(model.tokenizer)
    # The reported accuracy is the saved model's: evaluating it again on the same held-out examples gives it.
    codec = TaskCodec(model.tokenizer, report["gen_length"])
    again = evaluate(model, codec, examples(HELD_OUT, HELD_OUT_SEED)[:200],
                     DiffusionParams("low-confidence", gen_length=codec.gen_length, block_length=codec.gen_length))
    assert again["accuracy"] == report["history"][-1]["accuracy"]
    assert main(["bench-diffusion", "--target", str(folder), "--examples", "8", "--out", str(tmp_path),
                 "--name", "b", "--settings", "low-confidence,threshold:threshold=0.5"]) == 0
    results = json.loads((tmp_path / "b.json").read_text())
    reference, fast = results["settings"]["low-confidence"], results["settings"]["threshold:threshold=0.5"]
    assert reference["forward_reduction_vs_reference"] == 1.0
    assert fast["forwards_per_token"] <= reference["forwards_per_token"]


def test_bench_settings_are_checked():
    from mirrorspec.bench.diffusion_bench import parse_setting

    base = DiffusionParams(gen_length=16, block_length=16)
    assert parse_setting("threshold:threshold=0.7+early_commit=1", base).early_commit is True
    with pytest.raises(InvalidRequestError, match="^settings:"):
        parse_setting("threshold:treshold=0.7", base)
    with pytest.raises(InvalidRequestError, match="^threshold:"):
        parse_setting("threshold:threshold=2", base)


def test_the_mask_token_is_never_predicted():
    """Committing the mask token would leave a position masked for ever (a decoding loop without end)."""
    model = tiny_dllm()
    logits, _ = model.logits(torch.tensor([[1, MASK, MASK, MASK]]), torch.ones(1, 4, dtype=torch.bool))
    assert torch.isneginf(logits[..., MASK]).all()


@pytest.fixture(scope="module")
def diffusion_gemma_folder(tmp_path_factory):
    """A tiny random DiffusionGemma (transformers' block-diffusion model: encoder + canvas decoder)."""
    text = transformers.DiffusionGemmaTextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
        num_experts=2, top_k_experts=1, moe_intermediate_size=32, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    config = transformers.DiffusionGemmaConfig(text_config=text.to_dict(), vision_config=None, canvas_length=8)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("diffusion-gemma")
    transformers.DiffusionGemmaForBlockDiffusion(config).save_pretrained(folder)
    return folder


def test_diffusion_gemma_decodes_canvas_by_canvas_with_its_own_sampler(diffusion_gemma_folder):
    from mirrorspec.workers.diffusion_gemma import DiffusionGemmaLM, is_diffusion_gemma

    assert is_diffusion_gemma(diffusion_gemma_folder)
    model = DiffusionGemmaLM(diffusion_gemma_folder)
    params = DiffusionParams(gen_length=16, block_length=8, steps=3, stop_at_eos=False)
    blocks = []
    out = model.generate([2, 5, 6, 7], params, on_block=blocks.append)
    assert len(out.token_ids) == 16 and out.blocks == [8, 8] and 2 <= out.forwards <= 6
    assert [t for b in blocks for t in b] == out.token_ids  # committed canvases streamed in order
    again = model.generate([2, 5, 6, 7], params)
    assert again.token_ids == out.token_ids  # seeded by the request


@pytest.mark.parametrize("params, field", [
    (dict(strategy="low-confidence"), "strategy"),
    (dict(cache="prefix"), "cache"),
    (dict(early_commit=True), "early_commit"),
    (dict(gen_length=16, block_length=4), "block_length"),
])
def test_diffusion_gemma_refuses_mask_only_options(diffusion_gemma_folder, params, field):
    from mirrorspec.workers.diffusion_gemma import DiffusionGemmaLM

    with pytest.raises(InvalidRequestError, match=f"^{field}:"):
        DiffusionGemmaLM(diffusion_gemma_folder).generate([2, 5], DiffusionParams(**{"gen_length": 16,
                                                                                   "block_length": 8, **params}))
