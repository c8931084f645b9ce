"""The public GenerationService on TGIS's wire (protos/generation.proto, package fmaas) over a backend that runs
requests.

A backend is anything with `submit(prompt_ids, sampling, spec, time_limit_s=) -> Handle` (an `EngineLoop` in this
process, or the Ray Serve replicas: cluster/serve_replicas.py) plus the served model's facts.
serving/tgis_wire.py turns messages into validated parameters and outputs into messages; this module runs the RPCs and maps failures onto gRPC status codes:
bad input -> INVALID_ARGUMENT with the message's field path first ("params.sampling.top_p: ..."), a full queue ->
RESOURCE_EXHAUSTED, shutting down or a lost replica -> UNAVAILABLE. A client that cancels, or whose deadline
passes, frees the request's slot at once (the RPC's done-callback cancels it in the engine).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import grpc

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.outputs import RequestOutput
from mirrorspec.orchestration.prompts import Prompt, encode_prompt
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.protos import admin_pb2, admin_pb2_grpc
from mirrorspec.protos import generation_pb2 as pb
from mirrorspec.protos import generation_pb2_grpc as pb_grpc
from mirrorspec.serving import tgis_wire
from mirrorspec.serving.engine_loop import QueueFull, ScaleBusy, Stopping
from mirrorspec.serving.metrics import observed
from mirrorspec.serving.tgis_wire import METHOD_ENUMS, Limits, Request

logger = logging.getLogger(__name__)


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
            self._check_target(request)
            if not request.requests:
                raise InvalidRequestError("requests", "is empty")
            if len(request.requests) > self.limits.max_batch_prompts:
                raise InvalidRequestError("requests", f"{len(request.requests)} prompts; at most "
                                                      f"{self.limits.max_batch_prompts} per call")
            parsed = self._params(request.params)
            prompts = [self._prompt(r, parsed, f"requests[{i}]") for i, r in enumerate(request.requests)]
            handles = []
            if not context.add_callback(lambda: [h.cancel() for h in handles]):
                return pb.BatchedGenerationResponse()  # the RPC has already ended (deadline, client gone)
            try:
                for i, ids in enumerate(prompts):
                    handles.append(self._submit(ids, parsed, f"requests[{i}]"))
            except BaseException:
                for handle in handles:
                    handle.cancel()
                raise
            outputs = [self._last(handle) for handle in handles]
            return pb.BatchedGenerationResponse(responses=[
                self._response(out, parsed, r, whole=True) for out, r in zip(outputs, request.requests)])

    def GenerateStream(self, request: pb.SingleGenerationRequest, context):
        with _status(context):
            self._check_target(request)
            parsed = self._params(request.params)
            ids = self._prompt(request.request, parsed, "request")
            handle = self._submit(ids, parsed, "request")
        if not context.add_callback(handle.cancel):
            # The RPC ended (deadline, client gone) before the request was queued: nobody will read its outputs,
            # and a request left unread would hold its replica's drain (found by bench/soak.py).
            handle.cancel()
            return
        with _status(context):  # a replica lost mid-stream: UNAVAILABLE
            for index, out in enumerate(observed(handle, self.metrics)):
                yield self._response(out, parsed, request.request, whole=False, first=index == 0)

    def Tokenize(self, request: pb.BatchedTokenizeRequest, context) -> pb.BatchedTokenizeResponse:
        with _status(context):
            self._check_target(request)
            if len(request.requests) > self.limits.max_batch_prompts:
                raise InvalidRequestError("requests", f"at most {self.limits.max_batch_prompts} texts per call")
            return pb.BatchedTokenizeResponse(responses=[self._tokenized(item.text, request, f"requests[{i}].text")
                                                         for i, item in enumerate(request.requests)])

    def ModelInfo(self, request: pb.ModelInfoRequest, context) -> pb.ModelInfoResponse:
        with _status(context):
            self._check_model(request.model_id)
            return pb.ModelInfoResponse(
                model_kind=pb.ModelInfoResponse.DECODER_ONLY, max_sequence_length=self.model.max_model_len,
                max_new_tokens=self.limits.max_new_tokens, model_id=self.model.model_id,
                max_prompt_tokens=self.limits.max_prompt_tokens, drafter=self.model.drafter or "",
                methods=[METHOD_ENUMS[m] for m in self.model.methods], replicas=getattr(self.backend, "replicas", 1))

    # -------------------------------------------------------------------------------- requests
    def _check_model(self, model_id: str) -> None:
        if model_id and model_id != self.model.model_id:
            raise InvalidRequestError("model_id", f"unknown model {model_id!r}; this server serves "
                                                  f"{self.model.model_id!r}")

    def _check_target(self, request) -> None:
        """The model, and no prompt-tuning prefix or adapter (TGIS's; not served here)."""
        self._check_model(request.model_id)
        for name in ("prefix_id", "adapter_id"):
            if request.HasField(name):
                raise InvalidRequestError(name, "adapters and prompt-tuning prefixes are not served here")

    def _encode(self, prompt: Prompt, chat: bool | None, field: str) -> list[int]:
        try:
            return encode_prompt(self.model.tokenizer, self.model.vocab_size, prompt, chat)
        except InvalidRequestError as exc:  # "prompt[2].role" -> "request.messages[2].role"; "chat" -> "params.chat"
            prompt_field = exc.field.startswith("prompt")
            named = field + exc.field.removeprefix("prompt") if prompt_field else f"params.{exc.field}"
            raise InvalidRequestError(named, exc.reason) from None

    def _prompt(self, request: pb.GenerationRequest, parsed: Request, field: str) -> list[int]:
        """A request's token ids from its text or its chat messages (one of the two), truncated as asked."""
        if request.messages and request.text:
            raise InvalidRequestError(field, "give text or messages, not both")
        if request.messages:
            prompt, field = [{"role": m.role, "content": m.content} for m in request.messages], f"{field}.messages"
        else:
            prompt, field = request.text, f"{field}.text"
        ids = tgis_wire.truncated(self._encode(prompt, parsed.chat, field), parsed.truncate_input_tokens)
        if len(ids) > self.limits.max_prompt_tokens:
            raise InvalidRequestError(field, f"{len(ids)} tokens; at most {self.limits.max_prompt_tokens} "
                                             f"(params.truncate_input_tokens keeps the last ones)")
        return ids

    def _tokenized(self, text: str, request: pb.BatchedTokenizeRequest, field: str) -> pb.TokenizeResponse:
        ids = self._encode(text, False, field)
        keep = len(tgis_wire.truncated(ids, request.truncate_input_tokens))
        ids = ids[len(ids) - keep:]
        reply = pb.TokenizeResponse(token_count=len(ids), token_ids=ids)
        if request.return_tokens:
            reply.tokens.extend(self.model.tokenizer.convert_ids_to_tokens(ids))
        if request.return_offsets:
            spans = self.model.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
            reply.offsets.extend(pb.TokenizeResponse.Offset(start=a, end=b) for a, b in spans[len(spans) - keep:])
        return reply

    def _submit(self, ids: list[int], parsed: Request, field: str):
        """Hand the request to the backend; its checks (context length, draft size) name the client's fields."""
        if self._draining.is_set():
            raise Stopping("the server is shutting down")
        try:
            return self.backend.submit(ids, parsed.sampling, parsed.spec, time_limit_s=parsed.time_limit_s)
        except InvalidRequestError as exc:
            raise (InvalidRequestError(field, exc.reason) if exc.field == "prompt"
                   else tgis_wire.engine_field(exc)) from None

    def _params(self, params: pb.Parameters) -> Request:
        return tgis_wire.parse_params(params, defaults=self.default_sampling, default_spec=self.default_spec,
                                      methods=self.model.methods, limits=self.limits)

    def _last(self, handle) -> RequestOutput:
        out = None
        for out in observed(handle, self.metrics):
            pass
        return out

    def _response(self, out: RequestOutput, parsed: Request, request: pb.GenerationRequest, *, whole: bool,
                  first: bool = True) -> pb.GenerationResponse:
        input_text = ""
        if parsed.options.input_text and (whole or first):  # only the reply or first message carries it
            # a conversation has no text: its templated prompt stands for it
            input_text = request.text or self.model.tokenizer.decode(out.prompt_token_ids)
        return tgis_wire.response(out, parsed, self.model.tokenizer, whole=whole, first=first, input_text=input_text)


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    """Replicas at run time: `backend.scale(n)` (Serve's num_replicas), unless Serve's autoscaling owns them.
    A call can never wedge the server: past `max_replicas`, or past what the cluster can place now, it is refused
    at once; a second call while one is under way is refused (ABORTED); new replicas not loaded within
    `timeout_s` are stopped (DEADLINE_EXCEEDED)."""

    def __init__(self, backend, autoscaling: bool = False, *, max_replicas: int = 8,
                 timeout_s: float | None = None) -> None:
        self.backend = backend
        self.autoscaling = autoscaling
        self.max_replicas = max_replicas
        self.timeout_s = timeout_s

    def Scale(self, request: admin_pb2.ScaleRequest, context) -> admin_pb2.ScaleResponse:
        if request.replicas:
            self._scale(request.replicas, context)
        load = self.backend.load()
        return admin_pb2.ScaleResponse(replicas=load["num_replicas"], in_flight=load["in_flight"],
                                running=load["num_requests_running"], waiting=load["num_requests_waiting"],
                                autoscaling=self.autoscaling)

    def _scale(self, replicas: int, context) -> None:
        if not hasattr(self.backend, "scale"):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "replicas: this server runs one engine in its own "
                                                               "process (cluster.ray: never)")
        if self.autoscaling:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "replicas: serve.autoscaling_config manages them")
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
