"""What one target forward costs as the number of new tokens grows: the curve that decides whether speculation
pays (a k-token verify should cost about what one decode step does). The timing is the engine's own
(orchestration/step_cost.py); this reports it as the bench's medians and ratios."""

from __future__ import annotations

import statistics

import torch

from mirrorspec.orchestration.step_cost import time_forwards

TOKEN_COUNTS = (1, 2, 4, 8, 16, 32)


def verify_cost_curves(workers: dict[str, object], context: int = 200, repeats: int = 5,
                       counts: tuple[int, ...] = TOKEN_COUNTS) -> dict[str, dict]:
    """Per worker, the median milliseconds of one forward carrying k new tokens after a `context`-token prefix;
    `ratio` is each against k = 1."""
    times = time_forwards(workers, counts, repeats, context)
    curves = {}
    for name, per_count in times.items():
        ms = {k: statistics.median(v) * 1000 for k, v in per_count.items()}
        curves[name] = {"context": context, "threads": torch.get_num_threads(), "repeats": repeats,
                        "ms": {k: round(v, 3) for k, v in ms.items()},
                        "ratio": {k: round(v / ms[counts[0]], 3) for k, v in ms.items()}}
    return curves


def verify_cost_curve(worker, **kwargs) -> dict:
    return verify_cost_curves({"": worker}, **kwargs)[""]
