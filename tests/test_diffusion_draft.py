"""diffusion-draft on tiny models: lossless against ar at any batch size, the lattice tree, and the method checks."""

import random

import pytest
import torch

from helpers import tiny_engine, tiny_model
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.diffusion_draft import DiffusionDraftService, lattice_tree
from mirrorspec.orchestration.draft_tree import ROOT
from mirrorspec.orchestration.engine import Engine
from mirrorspec.params import SamplingParams, SpecParams
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


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.shape()}")
@pytest.mark.parametrize("weights", ["target", "other"])
def test_greedy_equals_ar_at_any_batch_size(target, spec, weights):
    model = target if weights == "target" else tiny_model("llama", VOCAB, seed=2, sharpness=4.0)
    ps = prompts(9)
    sampling = SamplingParams(max_new_tokens=24, ignore_eos=True)
    ar = [o.token_ids for o in tiny_engine(target, None).generate(ps, sampling)]
    for batch in (1, 4):
        outs = engine(target, service(model), batch).generate(ps, sampling, spec)
        assert [o.token_ids for o in outs] == ar
        assert all(o.stats.drafts > 0 for o in outs)
        if weights == "target":  # its first draft position is the target's own prediction
            assert all(o.stats.accepted_per_position[0] == o.stats.drafts for o in outs)
        assert all(len(o.stats.accepted_per_position) <= min(spec.tree_depth, 5) for o in outs)


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
