"""The public GenerationService (protos/generation.proto) over a backend that runs requests.

A backend is anything with `submit(prompt_ids, sampling, spec, chat=, time_limit_s=) -> Handle` (an
`EngineLoop` in this process, or the router over Ray replicas) plus the served model's facts. This module turns
messages into validated parameters and outputs into messages, and maps failures onto gRPC status codes:
bad input -> INVALID_ARGUMENT with the message's field path first ("params.sampling.top_p: ..."), a full queue ->
RESOURCE_EXHAUSTED, shutting down or a lost replica -> UNAVAILABLE. A client that cancels, or whose deadline
passes, frees the request's slot at once (the RPC's done-callback cancels it in the engine).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass

import grpc

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.prompts import Prompt, encode_prompt
from mirrorspec.orchestration.outputs import RequestOutput
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.protos import generation_pb2 as pb
from mirrorspec.protos import generation_pb2_grpc as pb_grpc
from mirrorspec.serving.engine_loop import CANCELLED, TIME_LIMIT, QueueFull, ScaleBusy, Stopping

logger = logging.getLogger(__name__)

METHOD_NAMES = {pb.AR: "ar", pb.CHAIN: "chain", pb.TREE: "tree", pb.MIRROR: "mirror",
                pb.DIFFUSION_DRAFT: "diffusion-draft", pb.NGRAM: "ngram"}
METHOD_ENUMS = {name: value for value, name in METHOD_NAMES.items()}
STOP_REASONS = {"eos": pb.EOS_TOKEN, "length": pb.MAX_TOKENS, "stop": pb.STOP_SEQUENCE, TIME_LIMIT: pb.TIME_LIMIT,
                CANCELLED: pb.CANCELLED, "abort": pb.CANCELLED, "error": pb.ERROR}
# SpeculationParameters' booleans, each turning off a SpecParams switch that is on by default.
OFF_SWITCHES = {"fixed_draft": "adaptive", "no_ngram_branches": "ngram_branches"}
# Where each engine parameter lives in the request message, so that errors name the client's field.
FIELD_PATHS = {
    "method": "params.method", "drafter": "params.method",
    "temperature": "params.sampling.temperature", "top_k": "params.sampling.top_k",
    "top_p": "params.sampling.top_p", "seed": "params.sampling.seed",
    "max_new_tokens": "params.stopping.max_new_tokens", "min_new_tokens": "params.stopping.min_new_tokens",
    "stop": "params.stopping.stop_sequences",
    **{name: f"params.speculation.{name}" for name in ("gamma", "tree_depth", "tree_topk", "tree_nodes",
                                                       "exit_layer", "kappa")},
}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (ray_config.yaml: serve.limits)."""

    max_prompt_tokens: int = 4096
    max_new_tokens: int = 1024
    max_batch_prompts: int = 64  # prompts in one Generate call
    max_stop_sequences: int = 8


@dataclass(frozen=True)
class ServedModel:
    model_id: str
    tokenizer: object
    vocab_size: int
    max_model_len: int
    drafter: str | None
    methods: tuple[str, ...]  # what this server accepts


class GenerationService(pb_grpc.GenerationServiceServicer):
    def __init__(self, backend, model: ServedModel, *, sampling: SamplingParams, spec: SpecParams,
                 limits: Limits, metrics=None) -> None:
        self.backend = backend
        self.metrics = metrics  # orchestration.metrics.ServingMetrics, or None
        self.model = model
        self.default_sampling = sampling
        self.default_spec = spec
        self.limits = limits
        self._draining = threading.Event()

    def drain(self) -> None:
        """Take no new request from now on (UNAVAILABLE: the client retries elsewhere); those in flight finish."""
        self._draining.set()

    # ------------------------------------------------------------------------------------ RPCs
    def Generate(self, request: pb.BatchedGenerationRequest, context) -> pb.BatchedGenerationResponse:
        with _status(context):
            self._check_model(request.model_id)
            if not request.requests:
                raise InvalidRequestError("requests", "is empty")
            if len(request.requests) > self.limits.max_batch_prompts:
                raise InvalidRequestError("requests", f"{len(request.requests)} prompts; at most "
                                                      f"{self.limits.max_batch_prompts} per call")
            sampling, spec, time_limit = self._params(request.params)
            chat = _chat(request.params)
            prompts = [self._prompt(r, chat, f"requests[{i}]") for i, r in enumerate(request.requests)]
            handles = []
            if not context.add_callback(lambda: [h.cancel() for h in handles]):
                return pb.BatchedGenerationResponse()  # the RPC has already ended (deadline, client gone)
            try:
                for i, ids in enumerate(prompts):
                    handles.append(self._submit(ids, sampling, spec, time_limit, f"requests[{i}]"))
            except BaseException:
                for handle in handles:
                    handle.cancel()
                raise
            outputs = [self._last(handle) for handle in handles]
            return pb.BatchedGenerationResponse(responses=[self._response(o, whole=True) for o in outputs])

    def GenerateStream(self, request: pb.SingleGenerationRequest, context):
        with _status(context):
            self._check_model(request.model_id)
            sampling, spec, time_limit = self._params(request.params)
            ids = self._prompt(request.request, _chat(request.params), "request")
            handle = self._submit(ids, sampling, spec, time_limit, "request")
        if not context.add_callback(handle.cancel):
            # The RPC ended (deadline, client gone) before the request was queued: nobody will read its outputs,
            # and a request left unread would hold its replica's drain (found by bench/soak.py).
            handle.cancel()
            return
        with _status(context):  # a replica lost mid-stream: UNAVAILABLE
            for out in self._observed(handle):
                yield self._response(out, whole=False)

    def Tokenize(self, request: pb.BatchedTokenizeRequest, context) -> pb.BatchedTokenizeResponse:
        with _status(context):
            self._check_model(request.model_id)
            if len(request.requests) > self.limits.max_batch_prompts:
                raise InvalidRequestError("requests", f"at most {self.limits.max_batch_prompts} texts per call")
            responses = []
            for i, item in enumerate(request.requests):
                ids = self._encode(item.text, False, f"requests[{i}].text")
                tokens = self.model.tokenizer.convert_ids_to_tokens(ids) if request.return_tokens else []
                responses.append(pb.TokenizeResponse(token_count=len(ids), token_ids=ids, tokens=tokens))
            return pb.BatchedTokenizeResponse(responses=responses)

    def ModelInfo(self, request: pb.ModelInfoRequest, context) -> pb.ModelInfoResponse:
        with _status(context):
            self._check_model(request.model_id)
            return pb.ModelInfoResponse(
                model_id=self.model.model_id, max_sequence_length=self.model.max_model_len,
                max_new_tokens=self.limits.max_new_tokens, max_prompt_tokens=self.limits.max_prompt_tokens,
                drafter=self.model.drafter or "", methods=[METHOD_ENUMS[m] for m in self.model.methods],
                replicas=getattr(self.backend, "replicas", 1))

    # -------------------------------------------------------------------------------- requests
    def _check_model(self, model_id: str) -> None:
        if model_id and model_id != self.model.model_id:
            raise InvalidRequestError("model_id", f"unknown model {model_id!r}; this server serves "
                                                  f"{self.model.model_id!r}")

    def _encode(self, prompt: Prompt, chat: bool | None, field: str) -> list[int]:
        try:
            return encode_prompt(self.model.tokenizer, self.model.vocab_size, prompt, chat)
        except InvalidRequestError as exc:  # "prompt[2].role" -> "request.messages[2].role"; "chat" -> "params.chat"
            prompt_field = exc.field.startswith("prompt")
            named = field + exc.field.removeprefix("prompt") if prompt_field else f"params.{exc.field}"
            raise InvalidRequestError(named, exc.reason) from None

    def _prompt(self, request: pb.GenerationRequest, chat: bool | None, field: str) -> list[int]:
        """A request's token ids from its text or its chat messages (one of the two)."""
        if request.messages and request.text:
            raise InvalidRequestError(field, "give text or messages, not both")
        if request.messages:
            prompt, field = [{"role": m.role, "content": m.content} for m in request.messages], f"{field}.messages"
        else:
            prompt, field = request.text, f"{field}.text"
        ids = self._encode(prompt, chat, field)
        if len(ids) > self.limits.max_prompt_tokens:
            raise InvalidRequestError(field, f"{len(ids)} tokens; at most {self.limits.max_prompt_tokens}")
        return ids

    def _submit(self, ids: list[int], sampling: SamplingParams, spec: SpecParams, time_limit: float | None,
                field: str):
        """Hand the request to the backend; its checks (context length, draft size) name the client's fields."""
        if self._draining.is_set():
            raise Stopping("the server is shutting down")
        try:
            return self.backend.submit(ids, sampling, spec, time_limit_s=time_limit)
        except InvalidRequestError as exc:
            path = field if exc.field == "prompt" else FIELD_PATHS.get(exc.field, exc.field)
            raise InvalidRequestError(path, exc.reason) from None

    def _params(self, params: pb.Parameters) -> tuple[SamplingParams, SpecParams, float | None]:
        sampling, stopping = params.sampling, params.stopping
        if stopping.max_new_tokens > self.limits.max_new_tokens:
            raise InvalidRequestError("params.stopping.max_new_tokens", f"{stopping.max_new_tokens}; at most "
                                                                        f"{self.limits.max_new_tokens}")
        if len(stopping.stop_sequences) > self.limits.max_stop_sequences:
            raise InvalidRequestError("params.stopping.stop_sequences", f"at most {self.limits.max_stop_sequences}")
        base = self.default_sampling
        values = {
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p or 1.0,
            "seed": sampling.seed if sampling.HasField("seed") else None,
            "max_new_tokens": stopping.max_new_tokens or base.max_new_tokens,
            "min_new_tokens": stopping.min_new_tokens,
            "stop": tuple(stopping.stop_sequences),
        }
        method = self.default_spec.method if params.method == pb.METHOD_DEFAULT else METHOD_NAMES.get(params.method)
        if method is None:
            raise InvalidRequestError("params.method", f"unknown method {params.method}")
        if method not in self.model.methods:
            raise InvalidRequestError("params.method", f"{method} is not served here; this server accepts "
                                                       f"{', '.join(self.model.methods)}")
        shape = {f.name: getattr(params.speculation, f.name) for f in pb.SpeculationParameters.DESCRIPTOR.fields
                 if getattr(params.speculation, f.name) and f.name not in OFF_SWITCHES}
        shape.update({name: False for switch, name in OFF_SWITCHES.items() if getattr(params.speculation, switch)})
        try:
            built = dataclasses.replace(base, **values).validate()
            spec = dataclasses.replace(self.default_spec, method=method, **shape)
        except InvalidRequestError as exc:
            raise InvalidRequestError(FIELD_PATHS.get(exc.field, exc.field), exc.reason) from None
        time_limit = stopping.time_limit_millis / 1000 if stopping.time_limit_millis else None
        return built, spec, time_limit

    def _observed(self, handle):
        """The handle's outputs, each counted in the metrics as it passes."""
        last = None
        for out in handle:
            now = time.perf_counter()
            if self.metrics is not None:
                self.metrics.output(out, None if last is None else now - last)
            last = now
            yield out

    def _last(self, handle) -> RequestOutput:
        out = None
        for out in self._observed(handle):
            pass
        return out

    def _response(self, out: RequestOutput, *, whole: bool) -> pb.GenerationResponse:
        response = pb.GenerationResponse(
            input_token_count=len(out.prompt_token_ids), generated_token_count=len(out.token_ids),
            text=out.text if whole else out.new_text, token_ids=out.token_ids if whole else out.new_token_ids,
            stop_reason=STOP_REASONS.get(out.finish_reason, pb.NOT_FINISHED) if out.finished else pb.NOT_FINISHED)
        if out.finished:
            st = out.stats
            response.speculation.CopyFrom(pb.SpeculationStats(
                target_forwards=st.target_forwards, drafts=st.drafts, drafted=st.drafted, accepted=st.accepted,
                tau=st.tau, accepted_per_position=st.accepted_per_position))
            if st.finish_time is not None:
                response.seconds = st.finish_time - st.arrival_time
        return response


def _chat(params: pb.Parameters) -> bool | None:
    """params.chat when the client set it; None (the model's chat template when it has one) otherwise."""
    return params.chat if params.HasField("chat") else None


class AdminService(pb_grpc.AdminServiceServicer):
    """Replicas at run time: `backend.scale(n)` (the router over Ray replicas), unless an autoscaler owns them.
    A call can never wedge the server: past `max_replicas`, or past what the cluster can place now, it is refused
    at once; a second call while one is under way is refused (ABORTED); new replicas not loaded within
    `timeout_s` are stopped (DEADLINE_EXCEEDED)."""

    def __init__(self, backend, autoscaling: bool = False, *, max_replicas: int = 8,
                 timeout_s: float | None = None) -> None:
        self.backend = backend
        self.autoscaling = autoscaling
        self.max_replicas = max_replicas
        self.timeout_s = timeout_s

    def Scale(self, request: pb.ScaleRequest, context) -> pb.ScaleResponse:
        if request.replicas:
            self._scale(request.replicas, context)
        load = self.backend.load()
        return pb.ScaleResponse(replicas=load["num_replicas"], in_flight=load["in_flight"],
                                running=load["num_requests_running"], waiting=load["num_requests_waiting"],
                                autoscaling=self.autoscaling)

    def _scale(self, replicas: int, context) -> None:
        if not hasattr(self.backend, "scale"):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "replicas: this server runs one engine in its own "
                                                               "process (cluster.ray: never)")
        if self.autoscaling:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "replicas: serve.autoscale manages them")
        if replicas > self.max_replicas:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"replicas: {replicas} is above serve.max_replicas="
                                                            f"{self.max_replicas}")
        problem = self.backend.placement_problem(replicas - self.backend.replicas)
        if problem is not None:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"replicas: {problem}")
        try:
            self.backend.scale(replicas, timeout_s=self.timeout_s, wait=False)
        except ScaleBusy as exc:
            context.abort(grpc.StatusCode.ABORTED, f"replicas: {exc}")
        except TimeoutError as exc:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"replicas: {exc}")


class _status:
    """Turns the service's exceptions into the RPC's status (the server itself keeps serving): bad input ->
    INVALID_ARGUMENT, a full queue -> RESOURCE_EXHAUSTED, draining or a lost replica -> UNAVAILABLE (retryable),
    anything else -> INTERNAL without its details. GeneratorExit (a client that left a stream) passes."""

    def __init__(self, context) -> None:
        self.context = context

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            return False
        if isinstance(exc, InvalidRequestError):
            self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if isinstance(exc, QueueFull):
            self.context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"queue full: {exc}")
        if isinstance(exc, Stopping):
            self.context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if isinstance(exc, Exception):  # a bug or a broken model: the client learns nothing of the server's insides
            logger.error("unexpected error answering an RPC", exc_info=(kind, exc, tb))
            self.context.abort(grpc.StatusCode.INTERNAL, "internal error (logged on the server)")
        return False
