"""Prompts the real default target writes itself (training/magpie.py), and one prompt source per data folder."""

import argparse
import json

import pytest

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.orchestration.factory import build_engine
from mirrorspec.training import magpie
from mirrorspec.training.train_drafter import SOURCE_FILE, _prompts


@pytest.fixture(scope="module")
def engine():
    return build_engine(EngineConfig(drafter=None, max_batch=8, dtype="float32", step_cost="off"))


def test_the_query_prefix_ends_where_a_user_message_begins(engine):
    prefix = magpie.query_prefix(engine.tokenizer)
    rendered = engine.tokenizer.apply_chat_template([{"role": "user", "content": "How do tides work?"}],
                                                    tokenize=False)
    assert prefix and rendered.startswith(prefix) and rendered[len(prefix):].startswith("How do tides work?")


def test_prompts_are_distinct_whole_messages_and_a_rerun_extends_the_file(engine, tmp_path):
    first = magpie.write_prompts(engine, tmp_path, 4, batch=2, max_tokens=48)
    assert len(first) == 4 and len({r["prompt"] for r in first}) == 4
    assert all(r["category"] == "magpie" and len(r["prompt"].split()) >= 3 for r in first)
    more = magpie.write_prompts(engine, tmp_path, 6, batch=2, max_tokens=48)
    assert more[:4] == first and len({r["prompt"] for r in more}) == 6
    draws = [json.loads(line)["draw"] for line in (tmp_path / magpie.PROMPTS_FILE).read_text().splitlines()]
    assert len(draws) == 6 and draws == sorted(set(draws))  # each draw its own seed, none drawn twice


def test_usable_keeps_whole_messages_of_a_few_words():
    assert magpie.usable("How do tides work?", "eos")
    assert not magpie.usable("How do tides work? And why do", "length")  # cut off by the cap
    assert not magpie.usable("Hi!", "eos")


def test_a_data_folder_keeps_the_prompt_source_it_started_with(tmp_path):
    args = argparse.Namespace(prompt_source="bank", prompts=3, gen_batch=2)
    assert [r["category"] for r in _prompts(args, None, tmp_path)] == ["writing", "roleplay", "reasoning"]
    assert (tmp_path / SOURCE_FILE).read_text().strip() == "bank"
    with pytest.raises(InvalidRequestError, match="prompt_source"):
        _prompts(argparse.Namespace(prompt_source="magpie", prompts=3, gen_batch=2), None, tmp_path)
    legacy = tmp_path / "legacy"  # answers from before sources were recorded are bank answers
    legacy.mkdir()
    (legacy / "responses.jsonl").write_text("")
    with pytest.raises(InvalidRequestError, match="prompt_source"):
        _prompts(argparse.Namespace(prompt_source="magpie", prompts=3, gen_batch=2), None, legacy)
