"""Chat by default and `mirrorspec chat` on the real default model (an instruct model with a chat template): a
bare question gets an answer (not the blank line a raw prompt gets), and the chat command keeps the conversation:
its second answer is the engine's answer to the whole conversation so far."""

import io

import pytest

from mirrorspec.cli.main import main
from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.orchestration.factory import build_engine
from mirrorspec.params import SamplingParams, SpecParams

pytestmark = pytest.mark.real_model

NEW = 12


@pytest.fixture(scope="module")
def engine():
    return build_engine(EngineConfig(drafter=None, max_batch=2, dtype="float32"))


def test_a_question_is_answered_by_default(engine):
    sampling = SamplingParams(max_new_tokens=NEW)
    default = engine.generate(["Why is the sky blue?"], sampling)
    raw = engine.generate(["Why is the sky blue?"], sampling, chat=False)
    assert default[0].text.strip() and default[0].token_ids != raw[0].token_ids
    assert default[0].token_ids == engine.generate(["Why is the sky blue?"], sampling, chat=True)[0].token_ids


def test_chat_command_keeps_the_conversation(engine, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a fruit.\n/stats\n/bogus\nAnd a colour?\n/exit\n"))
    assert main(["chat", "--system", "Answer in a few words.", "--method", "ar", "--drafter", "none", "--ray",
                 "never", "--max-new-tokens", str(NEW), "--dtype", "float32"]) == 0
    out, err = capsys.readouterr()
    assert "[ar]" in err and "tau" in err and "unknown command '/bogus'" in err
    sampling = SamplingParams(max_new_tokens=NEW)
    turns = [{"role": "system", "content": "Answer in a few words."}, {"role": "user", "content": "Name a fruit."}]
    first = engine.generate([turns], sampling, SpecParams(method="ar"))[0].text
    turns += [{"role": "assistant", "content": first}, {"role": "user", "content": "And a colour?"}]
    second = engine.generate([turns], sampling, SpecParams(method="ar"))[0].text
    assert first.strip() and out == f"{first}\n{second}\n"
