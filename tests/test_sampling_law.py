"""Sampling is lossless: over 8 generated tokens, the law of every position and of every adjacent pair under
`chain`, `tree` and `mirror` equals `ar`'s exact law (with the repetition and length penalties too), and a verifier
with any of three planted bugs fails the check.

Target: a tiny random model over a 4-token vocabulary (token 0 is EOS in the settings that stop at it), sharpened
so distributions are peaked and top-p / top-k bite. Drafter: a noisy copy of the target, so drafts are accepted to
depth 3 and beyond and then rejected, the case a lossy verifier gets wrong. The exact `ar` law is computed by
enumerating every continuation with the engine's own transform (EOS held back before min_new_tokens; a sequence
ends at EOS: later positions read END).

Bound (Bretagnolle-Huber-Carol): for N samples over K outcomes, P(||p_hat - p||_1 >= eps) <= 2^K exp(-N eps^2 / 2),
so with probability >= 1 - DELTA / TESTS the total-variation distance of one marginal is below
sqrt(2 (K ln 2 + ln(TESTS / DELTA)) / N) / 2; a union bound over the 8 position and 7 pair marginals keeps the
whole check's false-alarm rate below DELTA. Seeds are fixed, so the test is deterministic.

What the check can see: it fails once one marginal moves by more than its bound (0.033 for a position, 0.047 for
a pair at N = 6000) plus the sampling noise (about 0.01 here). A residual that moves a share b of its mass to one
token changes the law only where a draft is rejected: 3,240 of the 48,000 generated positions with `chain` at
T=0.6 (measured), so a position's marginal moves by about 0.07 * b * 0.7. The check catches b >= 0.3 (measured:
b = 0.3 exceeds the bound by 0.002, b = 0.4 by 0.015) and misses b = 0.2 (0.010 below it);
`test_a_slightly_biased_residual_fails` plants b = 0.4.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers import FlakyDrafter, noisy_copy, tiny_engine, tiny_model
from mirrorspec.orchestration import acceptance, scheduler
from mirrorspec.orchestration.acceptance import Verdict
from mirrorspec.orchestration.draft_tree import ROOT, DraftTree
from mirrorspec.orchestration.drafter_guard import DrafterGuard
from mirrorspec.orchestration.sampling import probabilities
from mirrorspec.orchestration.step_cost import StepCost
from mirrorspec.params import SamplingParams, SpecParams

VOCAB, LENGTH, N, DELTA = 4, 8, 6000, 1e-3
EOS, END = 0, -1
PROMPT = [1, 2, 3]
TESTS = LENGTH + (LENGTH - 1)  # position marginals + adjacent-pair marginals
SPECS = {
    "chain": SpecParams(method="chain", gamma=4),
    "tree": SpecParams(method="tree", tree_depth=4, tree_topk=3, tree_nodes=10),
    "mirror": SpecParams(method="mirror", gamma=4, kappa=3),
}
SETTINGS = {
    "T=0.6": dict(temperature=0.6, ignore_eos=True),
    # EOS does not stop here, so it may sit in a draft path: the penalty's context differs along each path.
    "T=0.6,penalties": dict(temperature=0.6, ignore_eos=True, repetition_penalty=1.5, length_penalty=(3, 1.5)),
    "T=1,top_p=0.8": dict(temperature=1.0, top_p=0.8, ignore_eos=True),
    "T=0.9,top_k=3,eos,min_new=3": dict(temperature=0.9, top_k=3, min_new_tokens=3),
}
# Each method at least once, each setting at least once (a tree run costs twice a chain's: 35 s on 2 cores).
CASES = [("chain", "T=0.6,penalties"), ("chain", "T=0.9,top_k=3,eos,min_new=3"), ("tree", "T=1,top_p=0.8"),
         ("mirror", "T=1,top_p=0.8")]
FAILING = range(7, 100_000, 25)  # the drafter's forward calls that fail: one in 25 (every 5-6 steps here)
CUTTING = StepCost.from_points({1: 1.0, 3072: 1.0, 8192: 2.0})  # free to 3072 tokens, then twice the cost

Law = dict[tuple[int, ...], float]


def tv_bound(outcomes: int) -> float:
    return math.sqrt(2 * (outcomes * math.log(2) + math.log(TESTS / DELTA)) / N) / 2


@pytest.fixture(scope="module")
def models():
    target = tiny_model("llama", VOCAB, seed=11, sharpness=6.0)
    return target, noisy_copy(target, 0.3, seed=5)


def exact_ar_law(target, params: SamplingParams) -> Law:
    """Every continuation's probability under `ar` (EOS ends it; its later positions are END)."""
    stops = not params.ignore_eos
    law: Law = {}
    level: Law = {(): 1.0}  # unfinished prefixes of the current length
    for position in range(LENGTH):
        prefixes = list(level)
        with torch.no_grad():
            logits = target.model(torch.tensor([PROMPT + list(p) for p in prefixes])).logits[:, -1].float()
        penalty = params.repetition_penalty
        for row, prefix in zip(logits, prefixes):  # the penalties, one row and one token at a time
            for token in set(PROMPT) | set(prefix) if penalty != 1.0 else ():
                row[token] = row[token] / penalty if row[token] > 0 else row[token] * penalty
            if params.length_penalty is not None and position > params.length_penalty[0]:
                start, decay = params.length_penalty
                row[EOS] = row[EOS] + abs(row[EOS]) * (decay ** (position - start) - 1)
        if position < params.min_new_tokens:
            logits[:, EOS] = float("-inf")
        probs = probabilities(logits, params)
        nxt: Law = {}
        for prefix, row in zip(prefixes, probs):
            for token in range(VOCAB):
                p = level[prefix] * float(row[token])
                if p == 0.0:
                    continue
                if stops and token == EOS:
                    law[prefix + (token,) + (END,) * (LENGTH - position - 1)] = p
                else:
                    nxt[prefix + (token,)] = p
        level = nxt
    law.update(level)
    return law


def sampled_law(target, drafter, spec: SpecParams, settings: dict, fail_calls=(), generate=None,
                step_cost=None) -> tuple[Law, list]:
    """The law of N seeded generations by an in-process engine (with `step_cost`, its adaptive budget), whose
    drafter's forward fails on `fail_calls` (then it decodes without drafts for a while and reopens its
    sequences), or by `generate(prompts, params, spec)` (e.g. a pipeline of Ray actors)."""
    if generate is None:
        engine = tiny_engine(target, drafter, max_batch=256, max_model_len=24, max_spec_nodes=16, eos_ids=[EOS],
                             step_cost=step_cost)
        if fail_calls:
            session = engine.drafter
            session.drafter = FlakyDrafter(session.drafter, fail_calls)
        generate = engine.generate
    params = [SamplingParams(max_new_tokens=LENGTH, seed=s, **settings) for s in range(N)]
    outs = generate([PROMPT] * N, params, spec)
    counts: dict[tuple[int, ...], int] = {}
    for out in outs:
        key = tuple(out.token_ids) + (END,) * (LENGTH - len(out.token_ids))
        counts[key] = counts.get(key, 0) + 1
    return {k: v / N for k, v in counts.items()}, outs


def marginal(law: Law, positions: tuple[int, ...]) -> Law:
    out: Law = {}
    for seq, p in law.items():
        key = tuple(seq[i] for i in positions)
        out[key] = out.get(key, 0.0) + p
    return out


def tv(p: Law, q: Law) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def excess(seen: Law, exact: Law) -> float:
    """The largest margin by which a position or adjacent-pair marginal exceeds its bound (<= 0: the law holds)."""
    outcomes = VOCAB + 1  # a token or END
    worst = max(tv(marginal(seen, (i,)), marginal(exact, (i,))) - tv_bound(outcomes) for i in range(LENGTH))
    return max(worst, max(tv(marginal(seen, (i, i + 1)), marginal(exact, (i, i + 1))) - tv_bound(outcomes ** 2)
                          for i in range(LENGTH - 1)))


def accepted_at_depth(outs, depth: int) -> int:
    return sum(o.stats.accepted_per_position[depth - 1] for o in outs if len(o.stats.accepted_per_position) >= depth)


def record_verdicts(monkeypatch) -> list[tuple[DraftTree, Verdict]]:
    """Every (draft, verdict) the scheduler's sampling verifier gives from now on."""
    records = []
    verify = scheduler.verify_sampling

    def recording(tree, target_probs, generator):
        verdict = verify(tree, target_probs, generator)
        records.append((tree, verdict))
        return verdict

    monkeypatch.setattr(scheduler, "verify_sampling", recording)
    return records


def younger_sibling_accepted(records, rank: int) -> bool:
    """Whether some accepted node was its parent's `rank`-th child (0: the eldest), its elder siblings rejected."""
    for tree, verdict in records:
        kids, parent = tree.children(), ROOT
        for node in verdict.path:
            if kids[parent].index(node) >= rank:
                return True
            parent = node
    return False


@pytest.mark.parametrize("method, setting", CASES)
def test_speculative_law_equals_ar(models, monkeypatch, method, setting):
    """`chain` and `tree` run under the adaptive budget: on CUTTING a full 256-row batch verifies each row's 11
    likeliest nodes (256 rows of 12 tokens ride free), and the drafting stop rule ends a draft where no node's
    predicted child path reaches 0.05 (pinned: the measured threshold depends on the machine's timings). For
    `tree`, the drafts also carry ngram branches (on by default). `mirror` windows are verified whole."""
    target, drafter = models
    settings = SETTINGS[setting]
    verdicts = record_verdicts(monkeypatch)
    thresholds = []
    monkeypatch.setattr(DrafterGuard, "min_path", lambda guard, tau: thresholds.append(tau) or 0.05)
    budgeted = method != "mirror"
    seen, outs = sampled_law(target, drafter, SPECS[method], settings, step_cost=CUTTING if budgeted else None)
    assert excess(seen, exact_ar_law(target, SamplingParams(**settings))) <= 0.0
    assert bool(thresholds) == budgeted
    # Speculation really ran: drafts accepted at depth 3 (and so rejected deeper, or fully accepted).
    assert accepted_at_depth(outs, 3) > 0
    if method == "tree":  # the rejection rule went past two rejected siblings and accepted the third
        assert younger_sibling_accepted(verdicts, 2)
        # ngram branches were merged (trees past the drafter's own 10 nodes were verified) and the budget cut
        assert any(len(tree) > SPECS["tree"].tree_nodes for tree, _ in verdicts)
        assert sum(o.stats.unverified for o in outs) > 0
    if "eos" in setting:
        assert any(len(o.token_ids) < LENGTH and o.token_ids[-1] == EOS for o in outs)
        assert all(EOS not in o.token_ids[:3] for o in outs)


def test_the_law_holds_while_the_drafter_keeps_failing(models):
    """Drafter failures mid-generation (decode alone, back off, reopen the sequences) leave the law as it is."""
    target, drafter = models
    settings = SETTINGS["T=1,top_p=0.8"]
    seen, outs = sampled_law(target, drafter, SPECS["chain"], settings, fail_calls=FAILING)
    assert excess(seen, exact_ar_law(target, SamplingParams(**settings))) <= 0.0
    assert sum(o.stats.fallback_steps for o in outs) > 0 and accepted_at_depth(outs, 2) > 0


# ------------------------------------------------------------------------------------------ negative controls
ORIGINAL_RESIDUAL = acceptance.residual_after_rejection


def resample_from_target(residual, token, proposal):
    """Bug: after a rejection, the correction is drawn from the target's P instead of norm(max(0, P - Q))."""
    return residual


def no_sibling_renormalisation(residual, token, proposal):
    """Bug: a rejected deterministic child's token is zeroed but the rest is not renormalised, so its younger
    siblings are accepted with P(x) instead of P(x) / (1 - P(rejected))."""
    if proposal is not None:
        return ORIGINAL_RESIDUAL(residual, token, proposal)
    residual = residual.clone()
    residual[token] = 0.0
    return residual if float(residual.sum()) > 0.0 else None


def biased_residual(bias: float):
    def residual_after_rejection(residual, token, proposal):
        """Bug: a share `bias` of the residual's mass moved to token 1."""
        fair = ORIGINAL_RESIDUAL(residual, token, proposal)
        if fair is None:
            return None
        skewed = (1 - bias) * fair
        skewed[1] += bias
        return skewed

    return residual_after_rejection


@pytest.mark.parametrize("bug, method, setting", [
    (resample_from_target, "chain", "T=1,top_p=0.8"),
    (no_sibling_renormalisation, "tree", "T=0.9,top_k=3,eos,min_new=3"),
], ids=["resample-from-target", "no-sibling-renormalisation"])
def test_a_lossy_verifier_fails(models, monkeypatch, bug, method, setting):
    target, drafter = models
    monkeypatch.setattr(acceptance, "residual_after_rejection", bug)
    seen, _ = sampled_law(target, drafter, SPECS[method], SETTINGS[setting])
    assert excess(seen, exact_ar_law(target, SamplingParams(**SETTINGS[setting]))) > 0.0


def test_a_slightly_biased_residual_fails(models, monkeypatch):
    target, drafter = models
    monkeypatch.setattr(acceptance, "residual_after_rejection", biased_residual(0.4))
    seen, _ = sampled_law(target, drafter, SPECS["chain"], SETTINGS["T=0.6"])
    assert excess(seen, exact_ar_law(target, SamplingParams(**SETTINGS["T=0.6"]))) > 0.0
