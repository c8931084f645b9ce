"""Engine behaviour on tiny random models: losslessness under batching, stopping, streaming, errors, fallback."""

import dataclasses
import random

import pytest
import torch

from helpers import FlakyDrafter, noisy_copy, run_by_step, tiny_engine, tiny_model
from mirrorspec.errors import InvalidRequestError
from mirrorspec.params import SamplingParams, SpecParams

VOCAB = 96
SPECS = [
    SpecParams(method="chain", gamma=4),
    SpecParams(method="chain", gamma=1),
    SpecParams(method="tree", tree_depth=4, tree_topk=3, tree_nodes=10),
    SpecParams(method="tree", tree_depth=2, tree_topk=5, tree_nodes=8),
    SpecParams(method="mirror", gamma=4),
    SpecParams(method="mirror", gamma=2, kappa=3),
]


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", VOCAB, seed=1, sharpness=4.0)


def prompts(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 30))] for _ in range(n)]


@pytest.mark.parametrize("drafter_kind", ["self", "noisy", "noisy-transposed-linear"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.method}-{s.shape()}")
def test_greedy_equals_ar_at_any_batch_size(target, drafter_kind, spec):
    """Self-drafting accepts every draft whole; a noisy copy of the target accepts drafts to various depths, so rows
    of one step commit different counts, each still equal to ar."""
    if drafter_kind == "noisy-transposed-linear":
        target = tiny_model("llama", VOCAB, seed=1, sharpness=4.0, cpu_linear="on")
    drafter = target if drafter_kind == "self" else noisy_copy(target, 0.4, seed=2)
    if drafter_kind == "self":  # the drafter's own drafts only: copied ngram branches need not all be accepted
        spec = dataclasses.replace(spec, ngram_branches=False)
    ps = prompts(9)
    new_tokens = 20
    sampling = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    ar = [o.token_ids for o in tiny_engine(target, None).generate(ps, sampling)]
    depth = spec.shape()[0]
    for batch in (1, 4):
        outs, steps = run_by_step(tiny_engine(target, drafter, max_batch=batch), ps, sampling, spec)
        assert [o.token_ids for o in outs] == ar
        if drafter_kind == "self":
            # A chain is accepted whole at every step, plus the bonus token (drafts never run past the limit). A
            # tree keeps its likeliest nodes, which may cut the deepest level, but its top child is always taken.
            made: dict[str, int] = {}
            for step in steps:
                for rid, count in step.items():
                    left = new_tokens - made.get(rid, 0)
                    if spec.method == "tree":
                        assert count >= min(2, left), (rid, count)
                    else:
                        assert count == min(depth + 1, left), (rid, count)
                    made[rid] = made.get(rid, 0) + count
            if spec.method != "tree":
                assert all(o.stats.accepted == o.stats.drafted > 0 for o in outs)
        elif depth >= 2:
            assert sum(o.stats.accepted_per_position[1] for o in outs if len(o.stats.accepted_per_position) > 1)
            assert sum(o.stats.accepted for o in outs) < sum(o.stats.drafted for o in outs)
            if batch > 1:  # in one step, two rows accepted different numbers of drafted tokens (at least one each)
                assert any(len({c for c in step.values() if c >= 2}) > 1 for step in steps)
        if spec.method == "mirror":
            assert all(o.stats.exit_checked == o.stats.drafts > 0 for o in outs)
            # Windows come from branches rolled out at the early exit whenever its top-kappa held the outcome.
            assert sum(o.stats.reused_windows for o in outs) > 0


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[2], SPECS[4]], ids=lambda s: s.method)
def test_a_sampled_row_does_not_depend_on_its_batch(target, spec):
    """A seeded request samples the same tokens alone, in a batch, at another position, and next to other
    requests: each row has its own random stream (the drafter's too), and nothing of one row leaks into another."""
    drafter = noisy_copy(target, 0.4, seed=2)
    ps = prompts(6, seed=4)
    params = [SamplingParams(max_new_tokens=16, temperature=0.8, top_p=0.95, seed=100 + i, ignore_eos=True)
              for i in range(len(ps))]
    alone = [tiny_engine(target, drafter, max_batch=1).generate([p], [s], spec)[0].token_ids
             for p, s in zip(ps, params)]
    together = tiny_engine(target, drafter, max_batch=6).generate(ps, params, spec)
    assert [o.token_ids for o in together] == alone
    assert sum(o.stats.accepted for o in together) > 0
    others = prompts(5, seed=21)
    extra = [SamplingParams(max_new_tokens=12, temperature=1.0, seed=7 + i, ignore_eos=True) for i in range(5)]
    mixed = tiny_engine(target, drafter, max_batch=4).generate(others[:2] + ps[::-1] + others[2:],
                                                               extra[:2] + params[::-1] + extra[2:], spec)
    assert [o.token_ids for o in mixed[2:2 + len(ps)]] == alone[::-1]


def test_mixed_methods_join_and_leave_between_steps(target):
    """Requests with different methods and lengths share batches; each still equals its ar output."""
    drafter = tiny_model("llama", VOCAB, seed=3, sharpness=4.0)
    engine = tiny_engine(target, drafter, max_batch=3)
    ps = prompts(8, seed=5)
    lengths = [3, 17, 8, 25, 1, 12, 6, 20]
    specs = [SPECS[i % len(SPECS)] if i % 3 else SpecParams(method="ar") for i in range(8)]
    expected = {}
    for p, n in zip(ps, lengths):
        (o,) = tiny_engine(target, None).generate([p], SamplingParams(max_new_tokens=n, ignore_eos=True))
        expected[tuple(p)] = o.token_ids
    ids = {engine.add_request(p, SamplingParams(max_new_tokens=n, ignore_eos=True), s): p
           for p, n, s in zip(ps, lengths, specs)}
    finished, max_live = {}, 0
    while engine.has_unfinished():
        outs = engine.step()
        max_live = max(max_live, len(outs))
        for o in outs:
            if o.finished:
                finished[o.request_id] = o
    assert max_live == 3
    for rid, p in ids.items():
        assert finished[rid].token_ids == expected[tuple(p)]
        assert finished[rid].finish_reason == "length"


def test_eos_stops_exactly_even_inside_an_accepted_draft(target):
    ps = prompts(6, seed=9)
    (ref,) = tiny_engine(target, None).generate([ps[0]], SamplingParams(max_new_tokens=30, ignore_eos=True))
    eos = ref.token_ids[7]
    cut = ref.token_ids[: ref.token_ids.index(eos) + 1]
    for spec in SPECS:
        (out,) = tiny_engine(target, target, eos_ids=[eos]).generate([ps[0]], SamplingParams(max_new_tokens=30), spec)
        assert out.token_ids == cut and out.finish_reason == "eos"


def test_min_new_tokens_holds_eos_back_and_every_method_agrees(target):
    """Before min_new_tokens the target's EOS is impossible (for drafts too): the answer runs past the first EOS
    `ar` would emit; greedy, every method gives the same tokens (sampled, each keeps EOS back as well)."""
    ps = prompts(6, seed=9)
    (ref,) = tiny_engine(target, None).generate([ps[0]], SamplingParams(max_new_tokens=30, ignore_eos=True))
    eos = ref.token_ids[3]
    first = ref.token_ids.index(eos)
    for temperature in (0.0, 0.9):
        sampling = SamplingParams(max_new_tokens=30, min_new_tokens=first + 5, temperature=temperature, seed=3)
        (held,) = tiny_engine(target, None, eos_ids=[eos]).generate([ps[0]], sampling)
        assert len(held.token_ids) >= first + 5 and eos not in held.token_ids[: first + 5]
        for spec in SPECS[:3]:
            (out,) = tiny_engine(target, target, eos_ids=[eos]).generate([ps[0]], sampling, spec)
            assert eos not in out.token_ids[: first + 5] and len(out.token_ids) >= first + 5
            assert out.token_ids == held.token_ids or temperature > 0


def test_streaming_delivers_every_token_once_in_order(target):
    engine = tiny_engine(target, target)
    chunks = list(engine.stream(prompts(1)[0], SamplingParams(max_new_tokens=25, ignore_eos=True),
                                SpecParams(method="chain", gamma=4)))
    assert chunks[-1].finished and not any(c.finished for c in chunks[:-1])
    streamed = [t for c in chunks for t in c.new_token_ids]
    assert streamed == chunks[-1].token_ids and len(streamed) == 25
    assert len(chunks) < 25  # several tokens per step were accepted and streamed together


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(prompt=[]), "prompt"),
        (dict(prompt=[VOCAB + 5]), "prompt"),
        (dict(sampling=SamplingParams(max_new_tokens=0)), "max_new_tokens"),
        (dict(sampling=SamplingParams(max_new_tokens=10_000)), "max_new_tokens"),
        (dict(prompt=[1] * 200), "prompt"),
        (dict(sampling=SamplingParams(temperature=-0.5)), "temperature"),
        (dict(sampling=SamplingParams(temperature=float("nan"))), "temperature"),
        (dict(sampling=SamplingParams(top_p=0.0)), "top_p"),
        (dict(sampling=SamplingParams(top_p=1.5)), "top_p"),
        (dict(sampling=SamplingParams(top_k=-1)), "top_k"),
        (dict(spec=SpecParams(method="medusa")), "method"),
        (dict(spec=SpecParams(method="chain", gamma=0)), "gamma"),
        (dict(spec=SpecParams(method="tree", tree_nodes=500)), "tree_nodes"),
        (dict(prompt="text without a tokenizer"), "prompt"),
    ],
)
def test_bad_input_names_the_field_and_the_batch_finishes(target, kwargs, field):
    engine = tiny_engine(target, target)
    good = prompts(3, seed=4)
    base = dict(prompt=[5, 6, 7], sampling=SamplingParams(max_new_tokens=8, ignore_eos=True),
                spec=SpecParams(method="chain"))
    base.update(kwargs)
    ok = dict(sampling=SamplingParams(max_new_tokens=8, ignore_eos=True), spec=SpecParams(method="chain"))
    in_flight = [engine.add_request(p, ok["sampling"], ok["spec"]) for p in good]
    engine.step()
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request(base["prompt"], base["sampling"], base["spec"])
    assert err.value.field == field and str(err.value).startswith(field)
    done = {}
    while engine.has_unfinished():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert sorted(done) == sorted(in_flight)
    assert all(len(o.token_ids) == 8 for o in done.values())


def test_speculation_without_a_drafter_is_refused(target):
    with pytest.raises(InvalidRequestError, match="drafter"):
        tiny_engine(target, None).add_request([1, 2], SamplingParams(), SpecParams(method="tree"))


@pytest.mark.parametrize("method", ["chain", "mirror"])
@pytest.mark.parametrize("fail_calls", [{3, 7}, set(range(2, 1000))], ids=["transient", "dead"])
def test_failing_drafter_falls_back_without_losing_tokens(target, fail_calls, method):
    ps = prompts(4, seed=8)
    sampling = SamplingParams(max_new_tokens=20, ignore_eos=True)
    ar = [o.token_ids for o in tiny_engine(target, None).generate(ps, sampling)]
    engine = tiny_engine(target, target)
    session = engine.drafter
    session.drafter = FlakyDrafter(session.drafter, fail_calls)
    outs = engine.generate(ps, sampling, SpecParams(method=method, gamma=3))
    assert [o.token_ids for o in outs] == ar
    assert sum(o.stats.fallback_steps for o in outs) > 0
    if len(fail_calls) > 2:
        # Retried with a doubling back-off (steps 1, 2, 4, 8, 16 of 20): ar in between, never stuck.
        assert engine.scheduler.drafter_failures >= 4
    else:
        assert engine.scheduler.drafter_failures == 0  # rejoined: the last tries succeeded
        assert sum(o.stats.drafts for o in outs) > 0


def test_abort_frees_the_slot(target):
    engine = tiny_engine(target, target, max_batch=1)
    first = engine.add_request([1, 2, 3], SamplingParams(max_new_tokens=50, ignore_eos=True), SpecParams("chain"))
    engine.step()
    engine.abort(first)
    (out,) = engine.generate([[4, 5]], SamplingParams(max_new_tokens=5, ignore_eos=True), SpecParams("chain"))
    assert len(out.token_ids) == 5


def test_bfloat16_models_stay_lossless():
    """Greedy equality holds within one dtype on the exact path: bf16 target and drafter, bf16 KV cache. (The fast
    path makes no such promise at half precision: its decode and verify forwards use different kernels.)"""
    target = tiny_model("qwen3", VOCAB, seed=6, sharpness=4.0)
    drafter = tiny_model("qwen3", VOCAB, seed=7, sharpness=4.0)
    for loaded in (target, drafter):
        loaded.model.to(torch.bfloat16)
    ps = prompts(5, seed=3)
    sampling = SamplingParams(max_new_tokens=16, ignore_eos=True)
    engine = tiny_engine(target, drafter, exact=True)
    assert engine.target.cache.keys.dtype == torch.bfloat16
    ar = [o.token_ids for o in tiny_engine(target, None, exact=True).generate(ps, sampling)]
    for spec in SPECS[:3]:
        assert [o.token_ids for o in engine.generate(ps, sampling, spec)] == ar


def test_generate_reports_a_bad_prompt_and_finishes_the_rest(target):
    outs = tiny_engine(target, target).generate([[1, 2], [], [3, 4, 5]], SamplingParams(max_new_tokens=4),
                                                SpecParams(method="tree"))
    assert outs[1].error.startswith("prompt:") and outs[1].finish_reason == "error"
    assert [len(outs[0].token_ids), len(outs[2].token_ids)] == [4, 4]
