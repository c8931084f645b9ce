"""The drafter training prompt set read from training/prompts/*.jsonl (fast, no model)."""

import hashlib
import json
from pathlib import Path

import pytest

import mirrorspec.bench
from mirrorspec.training.prompt_bank import CATEGORIES, generate_prompts

CAPACITY = 13 * 2000
# sha256 of "\n".join of the first 2000 prompts, computed from the template generator training/prompt_bank.py at
# commit 37ef46aa8038ee0ac70e3a8ca388b2308022c2d0 with generate_prompts(2000, seed=0): the shipped drafters'
# training set is unchanged.
FIRST_2000_SHA256 = "723e4838ec990c9033ec514226ca0176d167a3c11ce9db5459ffbef0dd8cc5bb"


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return generate_prompts(CAPACITY)


def test_round_robin_category_order(prompts):
    assert len(CATEGORIES) == 13
    assert [p["category"] for p in prompts] == [CATEGORIES[i % 13] for i in range(CAPACITY)]


def test_prompts_distinct_non_empty_and_short(prompts):
    texts = [p["prompt"] for p in prompts]
    assert len(set(texts)) == CAPACITY
    assert all(isinstance(t, str) and t.strip() and len(t) <= 1200 for t in texts)


def test_prefix_stable(prompts):
    for n, m in ((0, 1), (5, 13), (14, 2000), (2000, CAPACITY)):
        assert generate_prompts(n) == generate_prompts(m)[:n]
    assert generate_prompts(777) == prompts[:777]


@pytest.mark.parametrize("count", [CAPACITY + 1, -1])
def test_out_of_range_count_raises(count):
    with pytest.raises(ValueError, match="count"):
        generate_prompts(count)


def test_no_bench_prompt_in_training_set(prompts):
    bench_files = sorted((Path(mirrorspec.bench.__file__).parent / "prompts").glob("*.jsonl"))
    assert bench_files
    lines = [line for f in bench_files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    bench = {json.loads(line)["prompt"] for line in lines}
    assert bench
    assert not bench & {p["prompt"] for p in prompts}


def test_first_2000_fingerprint(prompts):
    digest = hashlib.sha256("\n".join(p["prompt"] for p in prompts[:2000]).encode("utf-8")).hexdigest()
    assert digest == FIRST_2000_SHA256
    assert generate_prompts(2000) == prompts[:2000]
