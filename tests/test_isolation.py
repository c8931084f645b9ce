"""One request can never hurt another: a numerical fault in one row of a step ends that request with an error
and leaves every other row of the batch exactly as it would have been; temperatures too small to sample with
decode greedily instead of turning into NaN."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_engine, tiny_model
from mirrorspec.params import GREEDY_BELOW, SamplingParams, SpecParams


class PoisonedRow:
    """Wraps the target's worker: from its `at`-th decoding forward on, one logit of one sequence is `value` (NaN:
    a fault that got past validation, as a temperature of 1e-45 once did; or an infinity)."""

    def __init__(self, inner, seq_id: int, at: int, value: float):
        self.inner, self.seq_id, self.at, self.value, self.calls = inner, seq_id, at, value, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward_hidden(self, seq_ids, appends, *args, **kwargs):
        logits, hidden = self.inner.forward_hidden(seq_ids, appends, *args, **kwargs)
        if all(len(a) == 1 for a in appends):  # a decoding step (prefills append the prompt)
            self.calls += 1
            if self.calls >= self.at and self.seq_id in seq_ids:
                row = seq_ids.index(self.seq_id)
                logits[row] = logits[row].clone()
                logits[row][..., 5] = self.value
        return logits, hidden


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", 64, seed=2)


PROMPTS = [[3, 9, 4, 1], [7, 7, 2], [5, 1, 8, 8, 2], [6, 2]]


@pytest.mark.parametrize("spec", [SpecParams(method="ar"), SpecParams(method="chain", gamma=3)], ids=["ar", "chain"])
@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampling"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_a_faulty_row_ends_alone(target, spec, temperature, value):
    sampling = [SamplingParams(max_new_tokens=12, ignore_eos=True, temperature=temperature, seed=i)
                for i in range(len(PROMPTS))]
    clean = tiny_engine(target, target, max_batch=4).generate(PROMPTS, sampling, spec)
    engine = tiny_engine(target, target, max_batch=4)
    engine.target = engine.scheduler.target = PoisonedRow(engine.target, seq_id=1, at=3, value=value)
    outs = engine.generate(PROMPTS, sampling, spec)
    assert outs[1].finish_reason == "error" and "not finite" in outs[1].error
    assert len(outs[1].token_ids) < 12  # it stopped where the fault struck
    for i in (0, 2, 3):
        assert outs[i].error is None and outs[i].token_ids == clean[i].token_ids
    # The engine goes on serving.
    again = engine.generate(PROMPTS[:1], sampling[:1], spec)
    assert again[0].token_ids == clean[0].token_ids


@pytest.mark.parametrize("temperature", [1e-45, 1e-38, GREEDY_BELOW / 2])
def test_a_vanishing_temperature_decodes_greedily(target, temperature):
    engine = tiny_engine(target, target, max_batch=2)
    greedy = engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=10, ignore_eos=True),
                             SpecParams(method="chain", gamma=3))
    tiny = engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=10, ignore_eos=True, temperature=temperature,
                                                       seed=1), SpecParams(method="chain", gamma=3))
    assert [o.token_ids for o in tiny] == [o.token_ids for o in greedy]
    assert all(o.error is None and torch.tensor(o.token_ids).ge(0).all() for o in tiny)


def test_a_64_bit_seed_is_used_whole(target):
    engine = tiny_engine(target, None, max_batch=4)
    seeds = [0, 2**32, 1, 2**32 + 1, 2**63, 2**64 - 1]
    outs = engine.generate([PROMPTS[0]] * len(seeds), [SamplingParams(max_new_tokens=16, ignore_eos=True,
                                                                      temperature=1.5, seed=s) for s in seeds])
    samples = [tuple(o.token_ids) for o in outs]
    assert len(set(samples)) == len(seeds)  # torch alone would draw 0 and 2^32 (and 2^63) alike
    again = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=16, ignore_eos=True, temperature=1.5,
                                                         seed=2**63))
    assert again[0].token_ids == outs[4].token_ids  # and a large seed still reproduces its output
