"""What a target forward costs as the number of tokens in it grows: the curve that says whether a draft pays.

On a GPU a forward of 64 tokens costs about what one of 1 does; on a CPU the cost grows with every token past a
few (bench/results/issue16-exact-variants.json: fp32 exact here, 8 tokens 1.2x, 16 tokens 2.5x). The adaptive
speculation budget (orchestration/spec_budget.py) reads this curve to decide how many draft nodes a step verifies.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

import torch

from mirrorspec.errors import InvalidRequestError
from mirrorspec.workers.interface import Worker

PROBE_COUNTS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)  # tokens per probed forward
MEASURE, OFF = "auto", "off"  # the engine's `step_cost` setting besides a table
PROBE_SEQ = -1  # a sequence id no request uses
# Two forwards of the same shape on a quiet machine take within this share of each other; a probe whose forwards
# spread wider ran beside other work (another process's threads on the same cores can slow a forward 10x).
STEADY_SPREAD = 0.25


@dataclass(frozen=True)
class StepCost:
    """Relative cost of one target forward by its token count (1 token = 1.0). Between measured counts it is the
    cost of the next one up, because kernels pad (the exact CPU kernels to 4-row multiples, GPU graphs to their
    batch sizes): 9 tokens cost what 12 do, not an eighth more than 8. Past the last count it grows in
    proportion; it never decreases (a measured dip is noise)."""

    counts: tuple[int, ...]
    costs: tuple[float, ...]
    # A probe's forwards agreed with each other (within STEADY_SPREAD at every count): no other work on the
    # machine disturbed it, so the curve may be kept for later engines. A table given by hand is steady.
    steady: bool = field(default=True, compare=False)

    @classmethod
    def from_points(cls, points: dict[int, float], steady: bool = True) -> "StepCost":
        if not points or any(not isinstance(k, int) or k < 1 or not v > 0 for k, v in points.items()):
            raise ValueError(f"a step cost needs token counts >= 1 with positive costs, got {points!r}")
        counts = tuple(sorted(points))
        base = points[counts[0]]
        costs, running = [], 0.0
        for k in counts:
            running = max(running, round(points[k] / base, 4))
            costs.append(running)
        return cls(counts, tuple(costs), steady)

    def __call__(self, tokens: int) -> float:
        i = bisect.bisect_left(self.counts, tokens)
        if i < len(self.counts):
            return self.costs[i]
        return self.costs[-1] * tokens / self.counts[-1]

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.counts, self.costs))


def parse_step_cost(value: str | dict) -> StepCost | str | None:
    """engine.step_cost: "auto" (MEASURE: probe the target before the first drafting step), "off" (None: verify
    every draft whole) or a table {token count: relative cost}."""
    if value == MEASURE:
        return MEASURE
    if value == OFF:
        return None
    if isinstance(value, dict):
        try:
            return StepCost.from_points({int(k): float(v) for k, v in value.items()})
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError("step_cost", str(exc)) from None
    raise InvalidRequestError("step_cost", f"must be auto, off or a table {{tokens: relative cost}}, got {value!r}")


def time_forwards(workers: dict[str, Worker], counts: tuple[int, ...], repeats: int,
                  context: int) -> dict[str, dict[int, list[float]]]:
    """Seconds of each forward carrying k new tokens (the last committed token and a k-1 node chain behind it)
    after a `context`-token prefix, per worker and k; the first round is a warm-up, not kept. Rounds go through
    every count in turn (not all repeats of one count back to back), so that a burst of other work on the machine
    slows one forward of a few counts, which the fastest-of-repeats drops, rather than every repeat of one count
    (a curve probed that way once priced 8 tokens at 1.96 forwards where they cost 1.23, and the budget chose
    widths by that error). The workers take turns, one forward each, so that a machine whose speed drifts treats
    them alike. Uses only the Worker interface (open, forward, commit, release), so it measures a remote or
    sharded target as it runs."""
    for worker in workers.values():
        worker.open(PROBE_SEQ)
        worker.forward([PROBE_SEQ], [[(3 + i) % worker.vocab_size for i in range(context)]])
    times: dict[str, dict[int, list[float]]] = {name: {k: [] for k in counts} for name in workers}
    try:
        for attempt in range(repeats + 1):
            for k in counts:
                for name, worker in workers.items():
                    chain = [(11 + i) % worker.vocab_size for i in range(k - 1)]
                    start = time.perf_counter()
                    worker.forward([PROBE_SEQ], [[7]], [chain], [list(range(-1, k - 2))])
                    device = getattr(worker, "device", None)
                    if device is not None and device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if attempt:
                        times[name][k].append(time.perf_counter() - start)
                    worker.commit({PROBE_SEQ: []})  # drop the chain; the context grows by one token
    finally:
        for worker in workers.values():
            worker.release(PROBE_SEQ)
    return times


def measure_step_cost(worker: Worker, counts: tuple[int, ...] = PROBE_COUNTS, repeats: int = 3,
                      context: int = 128) -> StepCost:
    """The worker's curve, from the fastest of `repeats` forwards at each count (the least disturbed by other
    work on the machine), marked steady or not (is_steady)."""
    times = time_forwards({"": worker}, counts, repeats, context)[""]
    return StepCost.from_points({k: min(v) for k, v in times.items()}, is_steady(times))


def is_steady(times: dict[int, list[float]]) -> bool:
    """Whether at every count the two fastest forwards agree within STEADY_SPREAD (one slow outlier is allowed:
    the curve takes the fastest), and no count's fastest forward is slower than a larger count's by more than
    that (a forward never gets cheaper with more tokens: such a dip means the smaller count was disturbed)."""
    fastest = [min(times[k]) for k in sorted(times)]
    agree = all(sorted(v)[min(1, len(v) - 1)] <= (1 + STEADY_SPREAD) * min(v) for v in times.values())
    return agree and all(t <= (1 + STEADY_SPREAD) * min(fastest[i:]) for i, t in enumerate(fastest))
