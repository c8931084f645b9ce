"""The OpenAI-compatible HTTP endpoint driven by the official `openai` client, against a real server on 127.0.0.1
over the same engine loop as the gRPC tests: completions, chat, streaming, n, seeds, logprobs, usage, errors."""

import json
import urllib.error
import urllib.request

import openai
import pytest

from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.serving.openai_http import HttpServer, OpenAIFrontend
from mirrorspec.serving.tgis_wire import Limits
from test_generation_service import TOKEN, Served, tiny_engine_of, tokenizer  # noqa: F401

QUESTION = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def http(tokenizer):  # noqa: F811
    served = Served(tokenizer)
    front = OpenAIFrontend(served.loop, served.server.servicer.model, SpecParams(method="chain", gamma=3),
                           default_max_tokens=16, limits=Limits(max_prompt_tokens=64, max_new_tokens=64),
                           token=TOKEN)
    server = HttpServer(front, host="127.0.0.1", port=0)
    yield served, server
    server.stop()
    served.stop()


@pytest.fixture(scope="module")
def client(http):
    return openai.OpenAI(base_url=f"{http[1].address}/v1", api_key=TOKEN, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def engine(http, tokenizer):  # noqa: F811
    return tiny_engine_of(http[0].models, tokenizer)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completion_is_the_engines_ar_text_with_usage_and_stats(client, engine):
    reply = client.completions.create(model="tiny", prompt="Hello there", max_tokens=12, temperature=0)
    (want,) = engine.generate(["Hello there"], SamplingParams(max_new_tokens=12), SpecParams("ar"), chat=False)
    (choice,) = reply.choices
    assert choice.text == want.text and choice.finish_reason in ("length", "stop")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(want.prompt_token_ids),
                                                                         len(want.token_ids))
    stats = choice.model_extra["speculation"]
    assert stats["drafts"] > 0 and stats["tau"] == pytest.approx(len(want.token_ids) / stats["target_forwards"],
                                                                 abs=1e-3)


def test_chat_unary_and_streamed_agree_with_the_engine(client, engine):
    (want,) = engine.generate([QUESTION], SamplingParams(max_new_tokens=14), SpecParams("ar"))
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=14, temperature=0)
    assert reply.choices[0].message.content == want.text and reply.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=14, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [reply.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_chat_logprobs_are_the_targets(client, engine, tokenizer):  # noqa: F811
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=8, temperature=0,
                                           logprobs=True, top_logprobs=3)
    (want,) = engine.generate([QUESTION], SamplingParams(max_new_tokens=8, logprobs=3), SpecParams("ar"))
    content = reply.choices[0].logprobs.content
    assert [c.token for c in content] == [tokenizer.decode([t]) for t in want.token_ids]
    for entry, item in zip(content, want.logprobs):
        assert entry.logprob == pytest.approx(item.logprob, abs=1e-5)
        assert [t.token for t in entry.top_logprobs] == [tokenizer.decode([t]) for t, _ in item.top]
        assert entry.bytes == list(entry.token.encode())


def test_echo_with_logprobs_gives_the_prompts_logprobs_too(client, engine, tokenizer):  # noqa: F811
    """OpenAI's legacy echo: the prompt comes back in front, and with `logprobs` its tokens too, each after the
    first with the target's logprob of it (the first has none), then the generated tokens'; unary and streamed."""
    prompt = "The capital of France is"
    (want,) = engine.generate([prompt], SamplingParams(max_new_tokens=6, logprobs=2, prompt_logprobs=2),
                              SpecParams("ar"), chat=False)
    ids = want.prompt_token_ids + want.token_ids
    reply = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, echo=True,
                                      logprobs=2)
    got = reply.choices[0].logprobs
    assert reply.choices[0].text == tokenizer.decode(want.prompt_token_ids) + want.text
    assert got.tokens == [tokenizer.decode([t]) for t in ids]
    assert got.token_logprobs[0] is None and got.top_logprobs[0] is None
    assert got.token_logprobs[1:] == pytest.approx([i.logprob for i in want.prompt_logprobs + want.logprobs], abs=1e-5)
    assert got.text_offset[0] == 0 and got.text_offset[len(want.prompt_token_ids)] == sum(
        len(t) for t in got.tokens[:len(want.prompt_token_ids)])
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, echo=True,
                                            logprobs=2, stream=True))
    assert [x for c in chunks for x in c.choices[0].logprobs.token_logprobs] == got.token_logprobs


def test_n_choices_with_a_seed_repeat(client):
    ask = dict(model="tiny", prompt=["One", "Two"], max_tokens=8, temperature=0.9, n=2, seed=7)
    first, again = client.completions.create(**ask), client.completions.create(**ask)
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert first.choices[0].text != first.choices[1].text or first.choices[0].text == ""


def test_a_streamed_completion_with_stop_and_logprobs(client, engine):
    (free,) = engine.generate(["Count with me"], SamplingParams(max_new_tokens=16), SpecParams("ar"), chat=False)
    stop = free.text[4:7]
    chunks = list(client.completions.create(model="tiny", prompt="Count with me", max_tokens=16, temperature=0,
                                            stop=[stop], stream=True, logprobs=2))
    assert "".join(c.choices[0].text for c in chunks) == free.text[: free.text.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(len(top) == 2 for c in chunks if c.choices[0].logprobs for top in c.choices[0].logprobs.top_logprobs)


@pytest.mark.parametrize("kwargs, status, param", [
    (dict(temperature=-1.0), 400, "temperature"),
    (dict(top_p=1.5), 400, "top_p"),
    (dict(max_tokens=0), 400, "max_tokens"),
    (dict(max_tokens=500), 400, "max_tokens"),
    (dict(presence_penalty=0.5), 400, "presence_penalty"),
    (dict(extra_body={"speculation": {"method": "mirror"}}), 400, "speculation.method"),
    (dict(extra_body={"speculation": {"gamma": 0}}), 400, "speculation.gamma"),
    (dict(extra_body={"bogus": 1}), 400, "bogus"),
    (dict(model="gpt-9"), 404, "model"),
    (dict(messages=[]), 400, "messages"),
])
def test_errors_are_openais_json_naming_the_field(client, kwargs, status, param):
    ask = {"model": "tiny", "messages": QUESTION, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**ask)
    assert caught.value.status_code == status
    assert caught.value.body["param"] == param and caught.value.body["message"], caught.value.body


def post_raw(server, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{server.address}/v1/{path}", data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.mark.parametrize("path, body, param", [
    ("completions", b'{"prompt": "hi", "max_tokens": 2', "body"),  # not JSON
    ("completions", b'{"prompt": null, "max_tokens": 2}', "prompt"),  # no member of the prompt's union
    ("completions", b'{"prompt": "caf\\ud800", "max_tokens": 2}', "prompt"),  # a lone surrogate
    ("chat/completions", b'{"messages": [{"role": "user", "content": "\\udc80!"}]}', "messages[0].content"),
])
def test_raw_bodies_get_400_naming_the_field(http, path, body, param):
    status, reply = post_raw(http[1], path, body)
    assert status == 400 and reply["error"]["param"] == param, reply


def test_the_model_field_may_be_left_out(http):
    status, reply = post_raw(http[1], "completions", b'{"prompt": "Hello", "max_tokens": 3, "temperature": 0}')
    assert status == 200 and reply["model"] == "tiny" and reply["usage"]["completion_tokens"] == 3


def test_without_the_token_it_is_401_and_health_is_open(http):
    server = http[1]
    bare = openai.OpenAI(base_url=f"{server.address}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bare.models.list()
    with urllib.request.urlopen(f"{server.address}/health", timeout=10) as reply:
        assert json.load(reply) == {"status": "ok"}
