"""diffusion-draft on tiny models: lossless against ar at any batch size, the lattice tree, and the method checks."""

import argparse
import random

import pytest
import torch
import transformers

from helpers import run_by_step, tiny_engine, tiny_model
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.diffusion_draft import DiffusionDraftService, lattice_tree
from mirrorspec.orchestration.draft_tree import ROOT
from mirrorspec.orchestration.engine import Engine
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.training import data, dllm_drafter
from mirrorspec.workers.diffusion_model import DiffusionLM, DllmMeta

VOCAB = 96
MASK = VOCAB - 1
SPECS = [SpecParams(method="diffusion-draft", tree_depth=4, tree_topk=3, tree_nodes=10),
         SpecParams(method="diffusion-draft", tree_depth=9, tree_topk=2, tree_nodes=12)]  # deeper than the window


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", VOCAB, seed=1, sharpness=4.0)


def service(model, window: int = 5) -> DiffusionDraftService:
    """A block-diffusion drafter over `model`'s weights: read causally, its committed tokens predict the next
    token exactly as `model` does (so with the target's own weights, draft position 1 is always accepted)."""
    return DiffusionDraftService(DiffusionLM(model.model, DllmMeta(MASK, shifted=True, draft_window=window), own=True))


def engine(target, drafter, batch: int) -> Engine:
    base = tiny_engine(target, None, max_batch=batch)
    return Engine(base.target, drafter, max_model_len=128, max_batch=batch, max_spec_nodes=64)


def prompts(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB - 1) for _ in range(rng.randint(1, 30))] for _ in range(n)]


@pytest.fixture(scope="module")
def trained(target) -> DiffusionLM:
    """A block-diffusion drafter trained for a few seconds on the tiny target's own greedy answers, with the
    project's training code (train-dllm --from-drafter's block layout and loss): its draft positions 1 and 2
    agree with the target often, deeper ones seldom, so drafts are accepted to depth 2 and then rejected."""
    torch.manual_seed(0)
    rows = [[random.Random(s).randrange(VOCAB - 1) for _ in range(6)] for s in range(96)]
    answers = tiny_engine(target, None, max_batch=32).generate(rows, SamplingParams(max_new_tokens=40,
                                                                                        ignore_eos=True))
    examples = []
    with torch.no_grad():
        for prompt, out in zip(rows, answers):
            ids = torch.tensor(prompt + out.token_ids)
            logp = torch.log_softmax(target.model(ids[None]).logits[0, len(prompt) - 1:-1].float(), dim=-1)
            top = logp.topk(4, dim=-1)
            examples.append(data.Sequence(ids, len(prompt), torch.zeros(len(ids), 1), top.indices, top.values))
    # Rows: the target's VOCAB tokens (the last one is the mask), then the row of any other id (none here).
    config = transformers.LlamaConfig(**{**target.model.config.to_dict(), "vocab_size": VOCAB + 1})
    model = transformers.LlamaForCausalLM(config)
    state = {k: v for k, v in target.model.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[:VOCAB] = target.model.get_input_embeddings().weight
        model.get_output_embeddings().weight[:VOCAB] = target.model.get_output_embeddings().weight
    drafter = DiffusionLM(model, DllmMeta(MASK, shifted=True, vocab=list(range(VOCAB)), target_vocab_size=VOCAB,
                                          draft_window=4), own=True)
    args = argparse.Namespace(lr=3e-3, steps=250, batch=16, window=4, max_len=64, seed=0, eval_every=10_000,
                              minutes=0)
    dllm_drafter.train(drafter, examples[8:], examples[:8], args)
    drafter.model.eval()
    return drafter


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.shape()}")
@pytest.mark.parametrize("weights", ["target", "other", "trained"])
def test_greedy_equals_ar_at_any_batch_size(target, trained, spec, weights):
    """Over the target's own weights (depth 1 always right), another model's (seldom right) and a drafter trained
    for the target (right to depth 2 or so, then wrong): every output equals ar at batch 1 and 4."""
    ps = prompts(9)
    sampling = SamplingParams(max_new_tokens=24, ignore_eos=True)
    ar = [o.token_ids for o in tiny_engine(target, None).generate(ps, sampling)]
    if weights == "trained":
        drafter, window = DiffusionDraftService(trained), 4
    else:
        drafter, window = service(target if weights == "target" else tiny_model("llama", VOCAB, seed=2,
                                                                                   sharpness=4.0)), 5
    for batch in (1, 4):
        outs, steps = run_by_step(engine(target, drafter, batch), ps, sampling, spec)
        assert [o.token_ids for o in outs] == ar
        assert all(o.stats.drafts > 0 for o in outs)
        if weights == "target":  # its first draft position is the target's own prediction
            assert all(o.stats.accepted_per_position[0] == o.stats.drafts for o in outs)
        if weights == "trained":
            assert sum(o.stats.accepted_per_position[1] for o in outs if len(o.stats.accepted_per_position) > 1)
            if batch > 1:  # in one step, two rows accepted different numbers of drafted tokens (at least one)
                assert any(len({c for c in step.values() if c >= 2}) > 1 for step in steps)
        assert all(len(o.stats.accepted_per_position) <= min(spec.tree_depth, window) for o in outs)


def test_sampling_stays_reproducible_and_in_vocabulary(target):
    ps = prompts(4, seed=3)
    sampling = SamplingParams(temperature=0.8, max_new_tokens=20, seed=7, ignore_eos=True)
    runs = [[o.token_ids for o in engine(target, service(target), batch).generate(ps, sampling, SPECS[0])]
            for batch in (1, 4)]
    assert runs[0] == runs[1]
    assert all(len(t) == 20 and all(0 <= x < VOCAB for x in t) for t in runs[0])


def test_the_lattice_tree_keeps_the_best_connected_nodes():
    logprobs = torch.log_softmax(torch.tensor([[4.0, 1.0, 0.0, -2.0], [0.0, 3.0, 1.0, -1.0], [2.0, 2.5, 0.0, 0.0]]), -1)
    tree = lattice_tree(logprobs, torch.tensor([10, 11, 12, 13]), topk=2, budget=6)
    assert len(tree) == 6 and tree.tokens[0] == 10 and tree.parents[0] == ROOT
    assert all(p < i for i, p in enumerate(tree.parents))  # parents come first: every kept node's parent is kept
    scores = []
    for node in range(len(tree)):
        score, n = 0.0, node
        while n != ROOT:
            score, n = score + tree.logprobs[n], tree.parents[n]
        scores.append(score)
    assert scores == sorted(scores, reverse=True)  # best-first
    assert all(tree.depth(n) <= 3 and p is None for n, p in enumerate(tree.proposals))
    chain = lattice_tree(logprobs, None, topk=1, budget=3)
    assert chain.tokens == [0, 1, 1] and chain.parents == [ROOT, 0, 1]


def test_each_drafter_serves_only_its_own_methods(target):
    ar_drafted = tiny_engine(target, tiny_model("llama", VOCAB, seed=2))
    with pytest.raises(InvalidRequestError, match="^method: diffusion-draft needs a block-diffusion drafter"):
        ar_drafted.add_request([1, 2], spec=SPECS[0])
    by_diffusion = engine(target, service(target), 2)
    for method in ("chain", "tree", "mirror"):
        with pytest.raises(InvalidRequestError, match=f"^method: {method} needs an autoregressive drafter"):
            by_diffusion.add_request([1, 2], spec=SpecParams(method=method))
    with pytest.raises(InvalidRequestError, match="^drafter: .* not a diffusion drafter"):
        DiffusionDraftService(DiffusionLM(target.model, DllmMeta(MASK), own=True))
