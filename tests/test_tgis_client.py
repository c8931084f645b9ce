"""An unmodified TGIS client against a mirrorspec server on 127.0.0.1: stubs generated from tests/tgis/generation.proto
(TGIS's interface restated apart from the server's proto, TGIS's fields only), run in a process of their own.
Its answers are checked against the engine's own `ar` in this process: tokens, logprobs, ranks and top-n (same
bits on the exact path), penalties lossless under chain (the server's default) and tree."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from grpc_tools import protoc

from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.protos import generation_pb2 as pb
from helpers import noisy_copy
from test_generation_service import (AUTH, TOKEN, Served, stub, tiny_engine_of, tiny_pair,  # noqa: F401
                                     tokenizer)

TGIS = Path(__file__).resolve().parent / "tgis"
PROMPTS = ["Why is the sky blue?", "Name three colours"]
RESPONSE = {"generated_tokens": True, "token_logprobs": True, "token_ranks": True, "top_n_tokens": 3,
            "input_tokens": True, "input_text": True}
PENALTIES = {"repetition_penalty": 1.5, "length_penalty": {"start_index": 6, "decay_factor": 1.3}}


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    out = tmp_path_factory.mktemp("tgis")
    args = ["protoc", f"-I{TGIS}", f"--python_out={out}", f"--grpc_python_out={out}", str(TGIS / "generation.proto")]
    assert protoc.main(args) == 0
    return out


@pytest.fixture(scope="module")
def served(tokenizer):  # noqa: F811
    target, _ = tiny_pair(tokenizer)
    s = Served(tokenizer, exact=True, models=(target, noisy_copy(target, 0.3)))  # a drafter that is often right
    yield s
    s.stop()


@pytest.fixture(scope="module")
def engine(served, tokenizer):  # noqa: F811
    """An engine of the served models in this process: the reference (exact path, as the server's)."""
    return tiny_engine_of(served.models, tokenizer, exact=True)


def tgis(stubs, served, *calls) -> list:
    done = subprocess.run([sys.executable, str(TGIS / "client.py"), str(stubs), served.server.address, TOKEN],
                          input=json.dumps([{"rpc": rpc, "request": request} for rpc, request in calls]),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def generate(prompts, params) -> tuple:
    return "Generate", {"requests": [{"text": p} for p in prompts], "params": params}


def f32(value: float) -> np.float32:
    """The float on the wire (float32): JSON prints it shortest, so both sides are compared as float32."""
    return np.float32(value)


def test_model_info_and_tokenize(stubs, served, tokenizer):  # noqa: F811
    info, tokens = tgis(stubs, served, ("ModelInfo", {}),
                        ("Tokenize", {"requests": [{"text": "Hello there, world"}], "return_tokens": True,
                                      "return_offsets": True, "truncate_input_tokens": 2}))
    assert info == {"model_kind": "DECODER_ONLY", "max_sequence_length": 300, "max_new_tokens": 64}
    ids = tokenizer.encode("Hello there, world")[-2:]
    (reply,) = tokens["responses"]
    assert reply["token_count"] == 2 and reply["tokens"] == tokenizer.convert_ids_to_tokens(ids)
    spans = [(o["start"], o["end"]) for o in reply["offsets"]]
    assert "".join("Hello there, world"[a:b] for a, b in spans) == tokenizer.decode(ids)


def test_greedy_tokens_logprobs_ranks_and_top_n_are_the_targets(stubs, served, engine, tokenizer):  # noqa: F811
    (reply,) = tgis(stubs, served, generate(PROMPTS, {"method": "GREEDY", "response": RESPONSE,
                                                      "stopping": {"max_new_tokens": 10}}))
    reference = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, logprobs=3, prompt_logprobs=3),
                                SpecParams("ar"))
    for prompt, got, want in zip(PROMPTS, reply["responses"], reference):
        assert got["text"] == prompt + want.text and got["generated_token_count"] == len(want.token_ids)
        assert got["input_token_count"] == len(want.prompt_token_ids)
        assert [t["text"] for t in got["input_tokens"]] == tokenizer.convert_ids_to_tokens(want.prompt_token_ids)
        first, *rest = got["input_tokens"]  # the first prompt token follows nothing: NaN, as TGIS answers
        assert first["logprob"] == "NaN" and first["rank"] == 0 and first["top_tokens"] == []
        for token, item in zip(rest, want.prompt_logprobs, strict=True):
            assert f32(token["logprob"]) == f32(item.logprob) and token["rank"] == item.rank
            assert [t["text"] for t in token["top_tokens"]] == tokenizer.convert_ids_to_tokens([i for i, _ in item.top])
        assert [t["text"] for t in got["tokens"]] == tokenizer.convert_ids_to_tokens(want.token_ids)
        for token, item in zip(got["tokens"], want.logprobs):
            assert f32(token["logprob"]) == f32(item.logprob) and token["rank"] == item.rank
            assert [(t["text"], f32(t["logprob"])) for t in token["top_tokens"]] == [
                (text, f32(value)) for text, (_, value) in zip(tokenizer.convert_ids_to_tokens(
                    [i for i, _ in item.top]), item.top)]
        assert got["stop_reason"] in ("MAX_TOKENS", "EOS_TOKEN") and got["seed"] == "0"


def test_penalties_are_lossless_under_chain_and_tree(stubs, served, engine, stub):  # noqa: F811
    sampling = SamplingParams(max_new_tokens=24, repetition_penalty=1.5, length_penalty=(6, 1.3))
    ar = engine.generate(PROMPTS, sampling, SpecParams("ar"))
    plain = engine.generate(PROMPTS, SamplingParams(max_new_tokens=24), SpecParams("ar"))
    assert [o.token_ids for o in ar] != [o.token_ids for o in plain]  # the penalties change the answer
    (chain,) = tgis(stubs, served, generate(PROMPTS, {"decoding": PENALTIES, "stopping": {"max_new_tokens": 24}}))
    assert [r["text"] for r in chain["responses"]] == [o.text for o in ar]
    params = pb.Parameters(decoding=pb.DecodingParameters(repetition_penalty=1.5, length_penalty={
        "start_index": 6, "decay_factor": 1.3}), stopping=pb.StoppingCriteria(max_new_tokens=24),
        speculation=pb.SpeculationParameters(method=pb.TREE))
    tree = stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text=p) for p in PROMPTS],
                                                     params=params), metadata=AUTH)
    assert [list(r.token_ids) for r in tree.responses] == [o.token_ids for o in ar]
    assert sum(r.speculation.accepted for r in tree.responses) > 0


def test_the_stream_adds_up_to_the_unary_reply(stubs, served):
    params = {"response": {"generated_tokens": True, "input_text": True}, "stopping": {"max_new_tokens": 16}}
    unary, stream = tgis(stubs, served, generate(PROMPTS[:1], params),
                         ("GenerateStream", {"request": {"text": PROMPTS[0]}, "params": params}))
    whole = unary["responses"][0]
    assert "".join(m["text"] for m in stream) == whole["text"]
    assert [t for m in stream for t in m["tokens"]] == whole["tokens"]
    assert stream[0]["input_token_count"] == whole["input_token_count"]
    assert [m["stop_reason"] for m in stream] == ["NOT_FINISHED"] * (len(stream) - 1) + [whole["stop_reason"]]


def test_sampling_echoes_the_seed_and_a_rerun_with_it_repeats(stubs, served):
    sample = {"method": "SAMPLE", "sampling": {"temperature": 0.9, "top_k": 20}, "stopping": {"max_new_tokens": 12}}
    (first,) = tgis(stubs, served, generate(PROMPTS[:1], sample))
    seed = first["responses"][0]["seed"]
    assert seed != "0"
    (again,) = tgis(stubs, served, generate(PROMPTS[:1], {**sample, "sampling": {**sample["sampling"], "seed": seed}}))
    assert again["responses"][0]["text"] == first["responses"][0]["text"]
    assert again["responses"][0]["seed"] == seed


def test_stop_sequences_are_included_unless_asked_not_to(stubs, served, engine):
    (free,) = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=16), SpecParams("ar"))
    stop = free.text[3:6]
    assert stop.strip()
    replies = tgis(stubs, served, *[generate(PROMPTS[:1], {"stopping": {"max_new_tokens": 16, "stop_sequences": [stop],
                                                                         **extra}})
                                    for extra in ({}, {"include_stop_sequence": False})])
    included, excluded = (r["responses"][0] for r in replies)
    cut = free.text.index(stop)
    assert included["text"] == free.text[: cut + len(stop)] and excluded["text"] == free.text[:cut]
    assert included["stop_reason"] == excluded["stop_reason"] == "STOP_SEQUENCE"
    assert included["stop_sequence"] == stop


def test_a_bad_field_is_invalid_argument_naming_it(stubs, served):
    bad = tgis(stubs, served, generate(PROMPTS[:1], {"method": "SAMPLE", "sampling": {"top_p": 1.5}}),
               generate(PROMPTS[:1], {"decoding": {"json_schema": "{}"}}))
    assert [(b["code"], b["details"].split(":")[0]) for b in bad] == [
        ("INVALID_ARGUMENT", "params.sampling.top_p"), ("INVALID_ARGUMENT", "params.decoding.json_schema")]
