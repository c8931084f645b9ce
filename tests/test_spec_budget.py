"""The adaptive speculation budget (orchestration/spec_budget.py) and the cost curve it reads
(orchestration/step_cost.py): the rule on hand-made drafts, then engines on tiny models, where it must keep
outputs identical to `ar` while it cuts drafts (the law under sampling: tests/test_sampling_law.py's `tree`
case runs with the budget cutting)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from helpers import noisy_copy, tiny_engine, tiny_model, worker
from mirrorspec.orchestration import factory
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.orchestration.draft_tree import ROOT, DraftTree
from mirrorspec.orchestration.drafter_guard import DrafterGuard
from mirrorspec.orchestration.drafting import DraftJob, draft_trees
from mirrorspec.orchestration.spec_budget import RowDraft, path_estimates, plan, prune
from mirrorspec.orchestration.step_cost import MEASURE, StepCost, is_steady, measure_step_cost, parse_step_cost
from mirrorspec.errors import InvalidRequestError
from mirrorspec.params import SamplingParams, SpecParams

FREE = StepCost.from_points({1: 1.0, 64: 1.0})  # a GPU-like forward: 64 tokens cost what 1 does
LINEAR = StepCost.from_points({1: 1.0, 2: 2.0})  # every token costs a whole forward
KNEE = StepCost.from_points({1: 1.0, 4: 1.0, 8: 2.0})  # free up to 4 tokens, twice that up to 8


def chain(*probabilities: float) -> DraftTree:
    n = len(probabilities)
    return DraftTree(tokens=list(range(10, 10 + n)), parents=list(range(-1, n - 1)), proposals=[None] * n,
                     logprobs=[math.log(p) for p in probabilities])


def test_the_cost_curve_steps_up_extends_and_never_falls():
    cost = StepCost.from_points({1: 10.0, 4: 9.0, 8: 12.0, 16: 24.0})
    assert cost(1) == cost(4) == 1.0  # the dip at 4 is noise
    assert cost(5) == cost(8) == pytest.approx(1.2)  # kernels pad: 5 tokens cost what 8 do
    assert cost(32) == pytest.approx(4.8)  # past the last point: in proportion
    with pytest.raises(ValueError):
        StepCost.from_points({0: 1.0})
    assert parse_step_cost("auto") == MEASURE and parse_step_cost("off") is None
    assert parse_step_cost({"1": 2, "8": 4})(8) == 2.0
    with pytest.raises(InvalidRequestError) as err:
        parse_step_cost({"1": -1})
    assert err.value.field == "step_cost"


def test_path_estimates_multiply_down_the_tree():
    tree = DraftTree(tokens=[1, 2, 3], parents=[ROOT, 0, ROOT], proposals=[None] * 3,
                     logprobs=[math.log(0.5), math.log(0.5), math.log(0.25)])
    assert path_estimates(tree) == pytest.approx([0.5, 0.25, 0.25])


def test_a_free_forward_verifies_the_whole_draft_and_a_costly_one_none():
    draft = chain(0.9, 0.8, 0.5)
    assert plan([RowDraft(draft, True)], FREE) == [[0, 1, 2]]
    # (1 + 0.9) / 2 < 1: even the likeliest node costs more than it is expected to commit
    assert plan([RowDraft(draft, True)], LINEAR) == [[]]


def test_the_unlikely_tail_is_cut_where_it_stops_paying():
    # Paths 0.9, 0.72, 0.36, 0.18: three nodes ride free in a 4-token forward; a fourth doubles its cost.
    assert plan([RowDraft(chain(0.9, 0.8, 0.5, 0.5), True)], KNEE) == [[0, 1, 2]]


def test_a_draft_must_promise_more_than_the_curves_error():
    # Free to verify, but 5% more tokens a step is within what the curve's own error could take back.
    assert plan([RowDraft(chain(0.05), True)], KNEE) == [[]]
    assert plan([RowDraft(chain(0.2), True)], KNEE) == [[0]]


def test_a_full_batch_decodes_plainly():
    rows = [RowDraft(chain(0.9, 0.8, 0.5), True) for _ in range(4)]
    assert plan(rows, KNEE) == [[], [], [], []]  # the 4 rows already fill the free part of the curve


def test_every_row_gets_the_same_width_because_the_forward_pads_rows_to_the_widest():
    rows = [RowDraft(chain(0.3, 0.9), True), RowDraft(chain(0.95, 0.9, 0.9), True)]
    # Width 1 fills the free 4 tokens (2 rows x 2) with 1.25 expected accepts; width 2 pads to 6 tokens (cost 2)
    # for 4.375 expected tokens, less than 3.25 per unit.
    assert plan(rows, KNEE) == [[0], [0]]
    # A lone likely row among plain ones is not widened: its nodes would widen every row.
    plain = [RowDraft(DraftTree(), True) for _ in range(3)]
    assert plan([RowDraft(chain(0.95, 0.9, 0.9), True), *plain], KNEE) == [[], [], [], []]


def test_tree_branches_are_kept_by_path_and_stay_closed_under_parents():
    tree = DraftTree(tokens=[10, 11, 12, 13], parents=[ROOT, ROOT, 0, 1], proposals=[None] * 4,
                     logprobs=[math.log(0.6), math.log(0.3), math.log(0.9), math.log(0.9)])
    curve = StepCost.from_points({1: 1.0, 3: 1.0, 4: 4.0})  # two nodes free, a third costs a whole forward
    kept = plan([RowDraft(tree, True)], curve)
    assert kept == [[0, 2]]  # paths 0.6 and 0.54 beat 0.3 and 0.27
    pruned = prune(tree, kept[0])
    assert (pruned.tokens, pruned.parents) == ([10, 12], [ROOT, 0])
    assert prune(tree, [0, 1, 2, 3]) is tree


def test_a_fixed_row_is_verified_whole_and_counts_as_load():
    fixed, adaptive = RowDraft(chain(*[0.9] * 6), False), RowDraft(chain(0.5, 0.5), True)
    # The fixed row pads both rows to 7 tokens: the adaptive row's nodes ride in that padding for free.
    assert plan([fixed, adaptive], KNEE) == [list(range(6)), [0, 1]]
    assert plan([fixed, RowDraft(chain(*[0.9] * 8), True)], KNEE) == [list(range(6)), list(range(6))]


# --------------------------------------------------------------------------------------- drafting stop rule
def test_the_stop_rule_threshold_weighs_a_drafter_forward_against_the_step():
    guard = DrafterGuard(service=None)
    assert guard.min_path(2.0) == 0.0  # nothing measured yet: draft the whole shape
    guard.target_step_took(0.090)
    guard.drafting_took(0.050, forwards=5)  # 10 ms a forward of a 50 ms propose, in a 140 ms step
    # A row committing 2 tokens a step makes a token every 70 ms: a 10 ms forward must add 1/7 token.
    assert guard.min_path(2.0) == pytest.approx(2 * 0.010 / 0.140)
    guard.drafting_took(10.0, forwards=1)
    assert guard.min_path(100.0) == 1.0


def stop_rule_drafts(drafter, min_path: float) -> list[DraftTree]:
    jobs = [DraftJob(seq_id=i, catchup=prompt, depth=6, topk=topk, budget=6 * topk, params=SamplingParams(),
                     generator=torch.Generator(), min_path=min_path)
            for i, (prompt, topk) in enumerate([([3, 4, 5], 1), ([9, 8, 7, 6], 3)])]
    for job in jobs:
        drafter.open(job.seq_id)
    trees = [d.tree for d in draft_trees(drafter, jobs)]
    for job in jobs:
        drafter.release(job.seq_id)
    return trees


def test_the_stop_rule_ends_a_draft_where_its_next_level_would_not_pay(target):
    drafter = worker(noisy_copy(target, 0.3, seed=2))
    whole = stop_rule_drafts(drafter, 0.0)
    assert [max(t.depth(n) for n in range(len(t))) for t in whole] == [6, 6]
    for tree, cut in zip(whole, stop_rule_drafts(drafter, 0.3)):
        paths = path_estimates(tree)
        # Level d + 1 is drafted iff some level-d node's path times its own probability reaches the threshold.
        depth = 1
        while depth < 6 and any(paths[n] * math.exp(tree.logprobs[n]) >= 0.3
                                for n in range(len(tree)) if tree.depth(n) == depth):
            depth += 1
        assert max(cut.depth(n) for n in range(len(cut))) == depth < 6
        # What it drafts up to there is the whole draft's (the same top-k choices, level by level).
        prefix = prune(tree, [n for n in range(len(tree)) if tree.depth(n) <= depth])
        assert (cut.tokens, cut.parents) == (prefix.tokens, prefix.parents)


# ------------------------------------------------------------------------------------------------ engines
@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", 64, seed=3, sharpness=4.0)


def prompts(n: int) -> list[list[int]]:
    return [[1 + (7 * i + j) % 60 for j in range(5 + i % 4)] for i in range(n)]


def run(engine, n: int, spec: SpecParams, sampling=SamplingParams(max_new_tokens=20, ignore_eos=True)):
    return engine.generate(prompts(n), sampling, spec)


@pytest.mark.parametrize("batch", [1, 4])
def test_a_cut_draft_keeps_greedy_output_equal_to_ar(target, batch):
    drafter = noisy_copy(target, 0.2, seed=1)
    ar = [o.token_ids for o in run(tiny_engine(target, None, max_batch=batch), 6, SpecParams(method="ar"))]
    outs = run(tiny_engine(target, drafter, max_batch=batch, step_cost=KNEE), 6, SpecParams(method="chain", gamma=5))
    assert [o.token_ids for o in outs] == ar
    assert sum(o.stats.accepted for o in outs) > 0 and sum(o.stats.unverified for o in outs) > 0


def test_under_load_the_engine_decodes_plainly_and_drafts_shallow(target):
    spec = SpecParams(method="chain", gamma=5)
    ar = [o.token_ids for o in run(tiny_engine(target, None), 8, SpecParams(method="ar"))]
    outs = run(tiny_engine(target, target, step_cost=LINEAR), 8, spec)
    assert [o.token_ids for o in outs] == ar
    assert all(o.stats.drafted == 0 and o.stats.unverified > 0 for o in outs)
    # After the first cut, each draft is one level deep (one past the deepest verified node, none).
    assert all(o.stats.unverified <= spec.gamma + o.stats.target_forwards for o in outs)
    # A request that turns the budget off is verified whole at the same load.
    fixed = run(tiny_engine(target, target, step_cost=LINEAR), 8, SpecParams(method="chain", gamma=5, adaptive=False))
    assert [o.token_ids for o in fixed] == ar
    assert all(o.stats.drafted > 0 and o.stats.unverified == 0 for o in fixed)


def test_the_engine_measures_its_cost_curve_once_and_frees_the_probe_slot(target):
    engine = tiny_engine(target, target, max_batch=2, max_spec_nodes=8)
    probes = []

    def probe():
        probes.append(1)
        return measure_step_cost(engine.target, counts=(1, 2, 4, 8), context=64)

    engine.scheduler.step_cost = probe
    outs = run(engine, 2, SpecParams(method="chain", gamma=3))
    cost = engine.scheduler.step_cost
    assert isinstance(cost, StepCost) and cost.counts == (1, 2, 4, 8) and cost(1) == 1.0
    assert all(len(o.token_ids) == 20 for o in outs)
    assert len(run(engine, 2, SpecParams(method="chain", gamma=3))) == 2  # both slots still free
    assert probes == [1]


def test_auto_measures_once_per_machine_and_model(target, tmp_path, monkeypatch):
    monkeypatch.setenv("MIRRORSPEC_CACHE", str(tmp_path))
    calls = []
    measure = factory.measure_step_cost

    def probe(steady: bool):
        # The real probe, its steadiness set: a tiny model's forwards take a millisecond, too short to judge.
        return lambda w, **kw: calls.append(kw) or dataclasses.replace(measure(w, **kw), steady=steady)

    monkeypatch.setattr(factory, "measure_step_cost", probe(True))
    config = EngineConfig(target="tiny", max_spec_nodes=8, max_model_len=128)
    first = factory.step_cost_source(config, worker(target))()
    again = factory.step_cost_source(config, worker(target))()  # another engine: read from the cache folder
    assert len(calls) == 1 and again == first and first.counts == (1, 2, 4, 8)
    assert factory.step_cost_source(dataclasses.replace(config, step_cost="off"), worker(target)) is None
    table = factory.step_cost_source(dataclasses.replace(config, step_cost={1: 1, 8: 2}), worker(target))
    assert table(8) == 2.0 and len(calls) == 1
    # New code in the forward's modules (a kernel changed): measured again.
    monkeypatch.setattr(factory, "forward_code_digest", lambda: "another kernel")
    assert factory.step_cost_source(config, worker(target))().counts == (1, 2, 4, 8) and len(calls) == 2
    # A probe disturbed by other work (forwards that disagree) is used, and measured again by the next engine.
    monkeypatch.setenv("MIRRORSPEC_CACHE", str(tmp_path / "busy"))
    monkeypatch.setattr(factory, "measure_step_cost", probe(False))
    assert factory.step_cost_source(config, worker(target))().counts == (1, 2, 4, 8)
    factory.step_cost_source(config, worker(target))()
    assert len(calls) == 4 and not (tmp_path / "busy").exists()


def test_a_probe_is_steady_when_its_fastest_forwards_agree_and_never_dip():
    assert is_steady({1: [0.010, 0.011, 0.030], 8: [0.020, 0.024, 0.021]})  # one outlier: the fastest is kept
    assert not is_steady({1: [0.010, 0.011, 0.012], 8: [0.020, 0.030, 0.031]})
    assert is_steady({1: [0.010]})
    # Each count's repeats agree, but 8 tokens took longer than 16: that count ran beside other work.
    assert not is_steady({1: [0.010, 0.010], 8: [0.020, 0.021], 16: [0.015, 0.015]})
    assert is_steady({1: [0.010, 0.010], 8: [0.016, 0.016], 16: [0.015, 0.015]})  # a dip within the spread
