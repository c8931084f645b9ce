"""Sampling is lossless: the law of the first 3 generated tokens under `chain` and `tree` equals `ar`'s exact law.

Tiny random target and drafter (different weights) over a 4-token vocabulary, sharpened so distributions are
peaked and top-p bites. The exact `ar` law is computed by enumerating all 4^3 continuations with the same
transform the engine uses. Bound (Bretagnolle-Huber-Carol): for N samples over K outcomes,
P(||p_hat - p||_1 >= eps) <= 2^K exp(-N eps^2 / 2), so with probability >= 1 - DELTA the total-variation
distance is below eps/2 = sqrt(2 (K ln 2 + ln(1/DELTA)) / N) / 2. Seeds are fixed, so the test is deterministic.
A negative control shows the bound is tight enough to catch a biased acceptance rule.
"""

import itertools
import math

import pytest
import torch

from helpers import reference_logits, tiny_engine, tiny_model
from mirrorspec.orchestration import scheduler
from mirrorspec.orchestration.acceptance import Verdict
from mirrorspec.orchestration.sampling import probabilities
from mirrorspec.params import SamplingParams, SpecParams

VOCAB, LENGTH, N, DELTA = 4, 3, 12000, 1e-3
PROMPT = [1, 2, 3]
SPECS = {
    "chain": SpecParams(method="chain", gamma=3),
    "tree": SpecParams(method="tree", tree_depth=3, tree_topk=2, tree_nodes=5),
    "mirror": SpecParams(method="mirror", gamma=3, kappa=4),
}
# Temperature scaling, and temperature 1 with nucleus truncation (top_p = 1 is the same code with nothing cut).
SETTINGS = {
    "T=0.6": dict(temperature=0.6),
    "T=1.0,top_p=0.8": dict(temperature=1.0, top_p=0.8),
}


def tv_bound(outcomes: int) -> float:
    return math.sqrt(2 * (outcomes * math.log(2) + math.log(1 / DELTA)) / N) / 2


@pytest.fixture(scope="module")
def models():
    return tiny_model("llama", VOCAB, seed=11, sharpness=6.0), tiny_model("llama", VOCAB, seed=12, sharpness=6.0)


def exact_ar_law(target, params: SamplingParams) -> dict[tuple[int, ...], float]:
    law = {}
    for seq in itertools.product(range(VOCAB), repeat=LENGTH):
        p = 1.0
        for i in range(LENGTH):
            p *= float(probabilities(reference_logits(target, PROMPT + list(seq[:i]))[None], params)[0, seq[i]])
        law[seq] = p
    return law


def empirical_law(target, drafter, spec: SpecParams, settings: dict, generate=None) -> dict[tuple[int, ...], float]:
    """The law of N generations; `generate(prompts, params, spec)` defaults to an in-process engine."""
    if generate is None:
        generate = tiny_engine(target, drafter, max_batch=256, max_model_len=16, max_spec_nodes=8).generate
    params = [SamplingParams(max_new_tokens=LENGTH, ignore_eos=True, seed=s, **settings) for s in range(N)]
    counts: dict[tuple[int, ...], int] = {}
    for out in generate([PROMPT] * N, params, spec):
        key = tuple(out.token_ids)
        counts[key] = counts.get(key, 0) + 1
    return {k: v / N for k, v in counts.items()}


def tv(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def marginal(law: dict, position: int) -> dict:
    out: dict[int, float] = {}
    for seq, p in law.items():
        out[seq[position]] = out.get(seq[position], 0.0) + p
    return out


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("method", sorted(SPECS))
def test_speculative_law_equals_ar(models, method, setting):
    target, drafter = models
    params = SamplingParams(**SETTINGS[setting])
    exact = exact_ar_law(target, params)
    seen = empirical_law(target, drafter, SPECS[method], SETTINGS[setting])
    assert tv(seen, exact) <= tv_bound(VOCAB**LENGTH), (method, setting, tv(seen, exact))
    for position in range(LENGTH):
        assert tv(marginal(seen, position), marginal(exact, position)) <= tv_bound(VOCAB)


def test_bound_catches_a_biased_rule(models, monkeypatch):
    """Negative control: accepting every drafted token (no rejection test) must fail the same check."""
    target, drafter = models

    def accept_all(tree, target_probs, generator):
        path = list(range(len(tree)))  # a sampled chain: nodes 0..n-1 in order
        return Verdict(path, int(torch.multinomial(target_probs[len(tree)], 1, generator=generator)))

    monkeypatch.setattr(scheduler, "verify_sampling", accept_all)
    settings = dict(temperature=1.0)
    exact = exact_ar_law(target, SamplingParams(**settings))
    seen = empirical_law(target, drafter, SPECS["chain"], settings)
    assert tv(seen, exact) > tv_bound(VOCAB**LENGTH)
