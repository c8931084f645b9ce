"""What one target forward costs as the number of new tokens grows: the curve that decides whether speculation
pays (a k-token verify should cost about what one decode step does)."""

from __future__ import annotations

import statistics
import time

import torch

TOKEN_COUNTS = (1, 2, 4, 8, 16, 32)


def verify_cost_curves(workers: dict[str, object], context: int = 200, repeats: int = 5,
                       counts: tuple[int, ...] = TOKEN_COUNTS) -> dict[str, dict]:
    """Per worker, the median milliseconds of one forward carrying k new tokens (a chain draft of k - 1 behind
    the last committed token) after a `context`-token prefix; `ratio` is each against k = 1. The workers take
    turns, one forward each, so that a machine whose speed drifts (a shared VM) treats them alike."""
    seq = -1  # a sequence id no request uses
    for worker in workers.values():
        worker.open(seq)
        worker.forward([seq], [list(range(3, context + 3))])
    times: dict[str, dict[int, list[float]]] = {name: {k: [] for k in counts} for name in workers}
    try:
        for k in counts:
            for attempt in range(repeats + 1):  # the first is a warm-up
                for name, worker in workers.items():
                    start = time.perf_counter()
                    worker.forward([seq], [[7]], [list(range(11, 10 + k))], [list(range(-1, k - 2))])
                    if worker.device.type == "cuda":
                        torch.cuda.synchronize(worker.device)
                    if attempt:
                        times[name][k].append(time.perf_counter() - start)
                    worker.rollback(seq, 1)  # and the draft's nodes
    finally:
        for worker in workers.values():
            worker.release(seq)
    curves = {}
    for name, per_count in times.items():
        ms = {k: statistics.median(v) * 1000 for k, v in per_count.items()}
        curves[name] = {"context": context, "threads": torch.get_num_threads(), "repeats": repeats,
                        "ms": {k: round(v, 3) for k, v in ms.items()},
                        "ratio": {k: round(v / ms[counts[0]], 3) for k, v in ms.items()}}
    return curves


def verify_cost_curve(worker, **kwargs) -> dict:
    return verify_cost_curves({"": worker}, **kwargs)[""]
