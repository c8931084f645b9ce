"""Synthetic tasks with checkable answers (in the spirit of ParallelBench, arXiv 2510.04767): copy, reverse and
sort a list of digits, add two numbers. They make a diffusion model's accuracy measurable here, and they differ
in how much the answer's tokens depend on each other (copy: not at all given the prompt; sort: fully), which is
what parallel commits trade against.

Texts are written with the target's tokenizer (SmolLM2's: one token per digit, one per space).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TASKS = ("copy", "reverse", "sort", "add")


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str
    answer: str


def make_example(task: str, rng: random.Random) -> Example:
    if task == "add":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return Example(task, f"Add: {a} + {b} =", f" {a + b}")
    digits = [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]
    done = {"copy": digits, "reverse": digits[::-1], "sort": sorted(digits)}[task]
    return Example(task, f"{task.capitalize()}: " + " ".join(map(str, digits)), "".join(f" {d}" for d in done))


def examples(n: int, seed: int, tasks: tuple[str, ...] = TASKS) -> list[Example]:
    """n examples, the tasks in turn; the same seed gives the same list."""
    rng = random.Random(seed)
    return [make_example(tasks[i % len(tasks)], rng) for i in range(n)]
