"""User prompts for drafter self-distillation, read from the data files in training/prompts/.

The prompts used to be produced by a 2,500-line template generator; only seed 0 was ever used, so its output
(2,000 prompts per category) was rendered once into one JSON Lines file per category (see prompts/README.md).
Plain data is easier to review, extend and diff than generator code. The order is unchanged: round-robin over
CATEGORIES, so generate_prompts(n) is a prefix of generate_prompts(m) for n < m.
"""

from __future__ import annotations

import json
from pathlib import Path

CATEGORIES: tuple[str, ...] = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
    "translation",
    "summarization",
    "qa",
    "math_reasoning",
    "rag",
)

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"


def _lines(category: str) -> list[str]:
    """The non-blank JSON lines of a category's file (split on newlines only, not on U+2028 and the like)."""
    with open(PROMPTS_DIR / f"{category}.jsonl", encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def generate_prompts(count: int) -> list[dict]:
    """Return the first `count` prompts, each {"category": str, "prompt": str}, round-robin over CATEGORIES.

    Raise ValueError if count is negative or beyond what the files hold (the capacity)."""
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    n = len(CATEGORIES)
    lines = [_lines(c) for c in CATEGORIES]
    # Prompt i is line i // n of category i % n, so category j can serve every count up to n * len + j.
    capacity = min(n * len(ls) + j for j, ls in enumerate(lines))
    if count > capacity:
        raise ValueError(f"count={count} exceeds the capacity of {capacity} prompts in {PROMPTS_DIR}")
    banks = [[json.loads(line)["prompt"] for line in ls[: len(range(j, count, n))]] for j, ls in enumerate(lines)]
    return [{"category": CATEGORIES[i % n], "prompt": banks[i % n][i // n]} for i in range(count)]
