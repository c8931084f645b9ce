"""OpenAI's completions and chat completions requests (pydantic models) -> the engine's parameters; outputs ->
OpenAI's response and stream-chunk JSON.

OpenAI's defaults hold (temperature 1, top_p 1, max_tokens 16 for completions); vLLM's extra sampling fields are
accepted (top_k, min_tokens, repetition_penalty, include_stop_str_in_output, ignore_eos), and mirrorspec's
speculation settings travel in `speculation` ({"method": "tree", "tree_depth": 4, ...}). Each finished choice
carries its request's speculation stats in an extra field `speculation`. Completions send the prompt as is;
chat completions go through the model's chat template. Fields OpenAI has that are not offered here (presence and
frequency penalties, logit_bias, suffix, best_of above n, tools) are refused with the field named.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.logprobs import TokenLogprob
from mirrorspec.orchestration.outputs import RequestOutput
from mirrorspec.params import SamplingParams, SpecParams

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "time_limit": "length"}
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpeculationOptions(_Strict):
    method: str | None = None
    gamma: int | None = None
    tree_depth: int | None = None
    tree_topk: int | None = None
    tree_nodes: int | None = None
    exit_layer: int | None = None
    kappa: int | None = None
    adaptive: bool | None = None
    ngram_branches: bool | None = None
    use_corpus: bool | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str | None = None  # None: the served model (as vLLM allows)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's extra sampling fields
    top_k: int = 0  # 0 or -1: off
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    # mirrorspec
    speculation: SpeculationOptions | None = None


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ChatMessageIn(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[dict]]
    name: str | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessageIn]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


# Engine field -> the OpenAI request field it came from.
FIELDS = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "stop": "stop", "seed": "seed",
          "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
          "repetition_penalty": "repetition_penalty", "method": "speculation.method",
          "drafter": "speculation.method"}


def request_field(exc: InvalidRequestError, logprobs_field: str) -> InvalidRequestError:
    """An engine error renamed to the request field it came from."""
    names = {**FIELDS, "logprobs": logprobs_field}
    field = names.get(exc.field) or (f"speculation.{exc.field}" if exc.field in SpeculationOptions.model_fields
                                     else exc.field)
    return InvalidRequestError(field, exc.reason)


def refuse_unoffered(request: _Common) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise InvalidRequestError(name, "is not offered; repetition_penalty is")
    if request.logit_bias:
        raise InvalidRequestError("logit_bias", "is not offered")
    if isinstance(request, CompletionRequest):
        if request.suffix:
            raise InvalidRequestError("suffix", "is not offered")
        if request.best_of is not None and request.best_of != request.n:
            raise InvalidRequestError("best_of", "must equal n (each choice is one sample)")
    if request.n < 1:
        raise InvalidRequestError("n", f"must be >= 1, got {request.n}")


def sampling_params(request: _Common, *, max_tokens: int | None, default_max_tokens: int,
                    logprobs: int | None, logprobs_field: str, prompt_logprobs: int | None = None) -> SamplingParams:
    values = dict(temperature=1.0 if request.temperature is None else request.temperature,
                  top_p=1.0 if request.top_p is None else request.top_p,
                  top_k=0 if request.top_k == -1 else request.top_k, seed=request.seed,
                  max_new_tokens=default_max_tokens if max_tokens is None else max_tokens,
                  min_new_tokens=request.min_tokens, stop=request.stop or (),
                  include_stop=request.include_stop_str_in_output, ignore_eos=request.ignore_eos,
                  repetition_penalty=request.repetition_penalty, logprobs=logprobs, prompt_logprobs=prompt_logprobs)
    try:
        return SamplingParams(**values).validate()
    except InvalidRequestError as exc:
        raise request_field(exc, logprobs_field) from None


def spec_params(request: _Common, default: SpecParams, methods: tuple[str, ...]) -> SpecParams:
    chosen = {} if request.speculation is None else request.speculation.model_dump(exclude_none=True)
    method = chosen.get("method", default.method)
    if method not in methods:
        raise InvalidRequestError("speculation.method", f"{method!r} is not served here; this server accepts "
                                                        f"{', '.join(methods)}")
    return dataclasses.replace(default, **chosen)


def choice_seeds(seed: int | None, n: int) -> list[int | None]:
    """n choices from one seed: seed, seed + 1, ... (each choice is its own request, reproducible alone)."""
    return [None if seed is None else (seed + i) % 2**64 for i in range(n)]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(outputs: list[RequestOutput], prompts: list[list[int]]) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    completion = sum(len(o.token_ids) for o in outputs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def finish_reason(out: RequestOutput) -> str | None:
    return FINISH_REASONS.get(out.finish_reason, out.finish_reason) if out.finished else None


def speculation_stats(out: RequestOutput) -> dict:
    st = out.stats
    return {"target_forwards": st.target_forwards, "drafts": st.drafts, "drafted": st.drafted,
            "accepted": st.accepted, "tau": round(st.tau, 4), "accepted_per_position": st.accepted_per_position}


def token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token])


def chat_logprobs(tokenizer, items: list[TokenLogprob]) -> dict:
    """OpenAI's chat `logprobs`: one entry per token, with its bytes and top candidates."""
    def entry(token: int, logprob: float) -> dict:
        text = token_text(tokenizer, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(i.token_id, i.logprob), "top_logprobs": [entry(t, v) for t, v in i.top]}
                        for i in items]}


def completion_logprobs(tokenizer, token_ids: list[int], items: list[TokenLogprob | None], offset: int) -> dict:
    """OpenAI's legacy completions `logprobs`: parallel lists, text offsets counted from `offset`. An item is None
    for a token with no logprob (an echoed prompt's first token)."""
    tokens = [token_text(tokenizer, t) for t in token_ids]
    offsets, at = [], offset
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {"tokens": tokens, "token_logprobs": [None if i is None else i.logprob for i in items],
            "top_logprobs": [None if i is None else {token_text(tokenizer, t): v for t, v in i.top} for i in items],
            "text_offset": offsets}


def created() -> int:
    return int(time.time())
