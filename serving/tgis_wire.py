"""TGIS's messages (protos/generation.proto, package fmaas) <-> the engine's parameters and outputs.

A request's Parameters become SamplingParams and SpecParams the way TGIS reads them: GREEDY ignores the sampling
message; SAMPLE reads it (temperature unset means 1.0); zeros mean the defaults. Errors name the client's field
("params.decoding.repetition_penalty: ..."). An output becomes a GenerationResponse with the ResponseOptions the
client asked for: the input text in front, generated tokens with the target's logprobs, ranks and top-n, the
input tokens, and the seed of a sampled request.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.outputs import RequestOutput
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.protos import generation_pb2 as pb
from mirrorspec.serving.engine_loop import CANCELLED, TIME_LIMIT

METHOD_NAMES = {pb.AR: "ar", pb.CHAIN: "chain", pb.TREE: "tree", pb.MIRROR: "mirror",
                pb.DIFFUSION_DRAFT: "diffusion-draft", pb.NGRAM: "ngram"}
METHOD_ENUMS = {name: value for value, name in METHOD_NAMES.items()}
STOP_REASONS = {"eos": pb.EOS_TOKEN, "length": pb.MAX_TOKENS, "stop": pb.STOP_SEQUENCE, TIME_LIMIT: pb.TIME_LIMIT,
                CANCELLED: pb.CANCELLED, "abort": pb.CANCELLED, "error": pb.ERROR}
# SpeculationParameters' booleans, each turning off a SpecParams switch that is on by default.
OFF_SWITCHES = {"fixed_draft": "adaptive", "no_ngram_branches": "ngram_branches", "no_corpus": "use_corpus"}
SHAPE_FIELDS = ("gamma", "tree_depth", "tree_topk", "tree_nodes", "exit_layer", "kappa")
# Where each engine parameter lives in the request message, so that errors name the client's field.
FIELD_PATHS = {
    "method": "params.speculation.method", "drafter": "params.speculation.method",
    "temperature": "params.sampling.temperature", "top_k": "params.sampling.top_k",
    "top_p": "params.sampling.top_p", "seed": "params.sampling.seed",
    "max_new_tokens": "params.stopping.max_new_tokens", "min_new_tokens": "params.stopping.min_new_tokens",
    "stop": "params.stopping.stop_sequences",
    "repetition_penalty": "params.decoding.repetition_penalty",
    "length_penalty.start_index": "params.decoding.length_penalty.start_index",
    "length_penalty.decay_factor": "params.decoding.length_penalty.decay_factor",
    "logprobs": "params.response.top_n_tokens",
    "prompt_logprobs": "params.response.top_n_tokens",
    **{name: f"params.speculation.{name}" for name in SHAPE_FIELDS},
}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (ray_config.yaml: serve.limits)."""

    max_prompt_tokens: int = 4096
    max_new_tokens: int = 1024
    max_batch_prompts: int = 64  # prompts in one Generate call
    max_stop_sequences: int = 8


@dataclass(frozen=True)
class Request:
    """One parsed request: what the engine runs, and what the reply shows."""

    sampling: SamplingParams
    spec: SpecParams
    time_limit_s: float | None
    truncate_input_tokens: int  # 0: none
    options: pb.ResponseOptions
    chat: bool | None  # params.chat when the client set it; None: the model's chat template when it has one


def engine_field(exc: InvalidRequestError) -> InvalidRequestError:
    """An engine error renamed to the request field it came from."""
    return InvalidRequestError(FIELD_PATHS.get(exc.field, exc.field), exc.reason)


def parse_params(params: pb.Parameters, *, defaults: SamplingParams, default_spec: SpecParams,
                 methods: tuple[str, ...], limits: Limits) -> Request:
    stopping, decoding, options = params.stopping, params.decoding, params.response
    if stopping.max_new_tokens > limits.max_new_tokens:
        raise InvalidRequestError("params.stopping.max_new_tokens", f"{stopping.max_new_tokens}; at most "
                                                                    f"{limits.max_new_tokens}")
    if len(stopping.stop_sequences) > limits.max_stop_sequences:
        raise InvalidRequestError("params.stopping.stop_sequences", f"at most {limits.max_stop_sequences}")
    guided = decoding.WhichOneof("guided")
    if guided is not None and not (guided == "format" and decoding.format == pb.DecodingParameters.TEXT):
        raise InvalidRequestError(f"params.decoding.{guided}", "guided decoding is not offered by this server")
    length = decoding.length_penalty
    values = {
        **_sampling(params),
        "max_new_tokens": stopping.max_new_tokens or defaults.max_new_tokens,
        "min_new_tokens": stopping.min_new_tokens,
        "stop": tuple(stopping.stop_sequences),
        "include_stop": stopping.include_stop_sequence if stopping.HasField("include_stop_sequence") else True,
        "repetition_penalty": decoding.repetition_penalty or 1.0,
        "length_penalty": (length.start_index, length.decay_factor) if decoding.HasField("length_penalty") else None,
        "logprobs": options.top_n_tokens if options.generated_tokens and _numbers(options) else None,
        "prompt_logprobs": options.top_n_tokens if options.input_tokens and _numbers(options) else None,
    }
    try:
        sampling = dataclasses.replace(defaults, **values).validate()
        spec = dataclasses.replace(default_spec, **_speculation(params.speculation, default_spec, methods))
    except InvalidRequestError as exc:
        raise engine_field(exc) from None
    time_limit = stopping.time_limit_millis / 1000 if stopping.time_limit_millis else None
    return Request(sampling, spec, time_limit, params.truncate_input_tokens, options,
                   params.chat if params.HasField("chat") else None)


def _sampling(params: pb.Parameters) -> dict:
    """GREEDY reads nothing of params.sampling (as TGIS); SAMPLE reads all of it."""
    if params.method not in (pb.GREEDY, pb.SAMPLE):
        raise InvalidRequestError("params.method", f"unknown decoding method {params.method}; GREEDY (0) or SAMPLE (1)")
    if params.method == pb.GREEDY:
        return {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": None}
    sampling = params.sampling
    if sampling.typical_p not in (0.0, 1.0):
        raise InvalidRequestError("params.sampling.typical_p", "typical sampling is not offered; leave it 0 (off)")
    return {"temperature": sampling.temperature if sampling.HasField("temperature") else 1.0,
            "top_k": sampling.top_k, "top_p": sampling.top_p or 1.0,
            "seed": sampling.seed if sampling.HasField("seed") else None}


def _speculation(speculation: pb.SpeculationParameters, default: SpecParams, methods: tuple[str, ...]) -> dict:
    if speculation.method == pb.METHOD_DEFAULT:
        method = default.method
    elif speculation.method in METHOD_NAMES:
        method = METHOD_NAMES[speculation.method]
    else:
        raise InvalidRequestError("method", f"unknown method {speculation.method}")
    if method not in methods:
        raise InvalidRequestError("method", f"{method} is not served here; this server accepts {', '.join(methods)}")
    values = {name: getattr(speculation, name) for name in SHAPE_FIELDS if getattr(speculation, name)}
    values.update({name: False for switch, name in OFF_SWITCHES.items() if getattr(speculation, switch)})
    return {"method": method, **values}


def truncated(ids: list[int], keep: int) -> list[int]:
    """TGIS's truncate_input_tokens: the last `keep` tokens (0: all)."""
    return ids[-keep:] if keep and len(ids) > keep else ids


def response(out: RequestOutput, request: Request, tokenizer, *, whole: bool, first: bool,
             input_text: str) -> pb.GenerationResponse:
    """`whole`: a unary reply (all the text and tokens); else a stream message with the new ones, the first
    message also carrying the input (text, tokens)."""
    options = request.options
    ids = out.token_ids if whole else out.new_token_ids
    message = pb.GenerationResponse(
        input_token_count=len(out.prompt_token_ids), generated_token_count=len(out.token_ids),
        text=(input_text if options.input_text and (whole or first) else "") + (out.text if whole else out.new_text),
        token_ids=ids, seed=out.seed or 0,
        stop_reason=STOP_REASONS.get(out.finish_reason, pb.NOT_FINISHED) if out.finished else pb.NOT_FINISHED,
        stop_sequence=out.stop_sequence or "")
    if options.generated_tokens:
        message.tokens.extend(_token_infos(ids, out.logprobs if whole else out.new_logprobs, options, tokenizer))
    if options.input_tokens and (whole or first):
        # The first prompt token follows nothing: no logprob (NaN, as TGIS), rank or candidates.
        prompt = None if out.prompt_logprobs is None else [None, *out.prompt_logprobs]
        message.input_tokens.extend(_token_infos(out.prompt_token_ids, prompt, options, tokenizer))
    if out.finished:
        st = out.stats
        message.speculation.CopyFrom(pb.SpeculationStats(
            target_forwards=st.target_forwards, drafts=st.drafts, drafted=st.drafted, accepted=st.accepted,
            tau=st.tau, accepted_per_position=st.accepted_per_position))
        if st.finish_time is not None:
            message.seconds = st.finish_time - st.arrival_time
    return message


def _numbers(options: pb.ResponseOptions) -> bool:
    """Whether the options ask for any of the target's numbers about a token."""
    return bool(options.token_logprobs or options.token_ranks or options.top_n_tokens)


def _token_infos(ids: list[int], logprobs, options: pb.ResponseOptions, tokenizer) -> list[pb.TokenInfo]:
    """Each token's string; with `logprobs` (one per token, None for a token without), what the options ask of
    the target's numbers."""
    texts = tokenizer.convert_ids_to_tokens(ids)
    infos = [pb.TokenInfo(text=text, id=token) for token, text in zip(ids, texts)]
    for info, item in zip(infos, logprobs or ()):
        if item is None:
            if options.token_logprobs:
                info.logprob = math.nan
            continue
        if options.token_logprobs:
            info.logprob = item.logprob
        if options.token_ranks:
            info.rank = item.rank
        top_ids = [token for token, _ in item.top]
        for (token, logprob), text in zip(item.top, tokenizer.convert_ids_to_tokens(top_ids)):
            info.top_tokens.add(text=text, logprob=logprob, id=token)
    return infos
