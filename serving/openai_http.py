"""OpenAI-compatible HTTP (`serve.http_port`): /v1/models, /v1/completions, /v1/chat/completions, streaming by
server-sent events, over the same backend, model facts, limits and bearer token as the gRPC service.

FastAPI (with uvicorn, both already Ray Serve's HTTP stack) rather than a hand-written HTTP layer: request models
validate with the field named, and the app can later run as a Ray Serve ingress as it is. Errors are OpenAI's JSON
({"error": {"message", "type", "param", "code"}}): 400 naming the field, 401 without the token, 404 for an unknown
model, 429 when the queue is full, 503 while draining. A client that disconnects cancels its requests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import queue
import threading
from collections.abc import Iterator

import anyio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.outputs import RequestOutput
from mirrorspec.orchestration.prompts import encode_prompt
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.protos.gate import bearer_ok
from mirrorspec.serving import openai_protocol as oa
from mirrorspec.serving.engine_loop import QueueFull, Stopping
from mirrorspec.serving.metrics import observed
from mirrorspec.serving.tgis_wire import Limits

logger = logging.getLogger(__name__)
WORKER_THREADS = 256  # requests waiting on the engine each hold a thread of the app's pool


class HttpError(Exception):
    def __init__(self, status: int, message: str, kind: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code


def _error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


@dataclasses.dataclass
class OpenAIFrontend:
    """What the endpoints share: the backend, the served model, defaults and limits, the token, the metrics."""

    backend: object
    model: object  # generation_service.ServedModel
    default_spec: SpecParams
    default_max_tokens: int
    limits: Limits
    token: str | None = None
    metrics: object = None
    draining: threading.Event = dataclasses.field(default_factory=threading.Event)

    # ---------------------------------------------------------------------------------- requests
    def check(self, request: oa._Common) -> None:
        if request.model is not None and request.model != self.model.model_id:
            raise HttpError(404, f"The model `{request.model}` does not exist; this server serves "
                                 f"`{self.model.model_id}`", "invalid_request_error", "model", "model_not_found")
        oa.refuse_unoffered(request)
        if self.draining.is_set():
            raise Stopping("the server is shutting down")

    def submit(self, prompts: list[list[int]], sampling: SamplingParams, spec: SpecParams, n: int,
               logprobs_field: str) -> list:
        """n handles per prompt (prompt-major, as OpenAI numbers the choices); all or none are queued."""
        if len(prompts) * n > self.limits.max_batch_prompts:
            raise InvalidRequestError("n", f"{len(prompts)} prompts x n={n}; at most {self.limits.max_batch_prompts} "
                                           f"choices per call")
        if sampling.max_new_tokens > self.limits.max_new_tokens:
            raise InvalidRequestError("max_tokens", f"{sampling.max_new_tokens}; at most {self.limits.max_new_tokens}")
        handles = []
        try:
            for ids in prompts:
                for seed in oa.choice_seeds(sampling.seed, n):
                    handles.append(self.backend.submit(ids, dataclasses.replace(sampling, seed=seed), spec))
        except BaseException as exc:
            for handle in handles:
                handle.cancel()
            if isinstance(exc, InvalidRequestError):
                raise oa.request_field(exc, logprobs_field) from None
            raise
        return handles

    def encode(self, prompt, chat: bool, field: str) -> list[int]:
        try:
            ids = encode_prompt(self.model.tokenizer, self.model.vocab_size, prompt, chat)
        except InvalidRequestError as exc:
            raise InvalidRequestError(field + exc.field.removeprefix("prompt"), exc.reason) from None
        if len(ids) > self.limits.max_prompt_tokens:
            raise InvalidRequestError(field, f"{len(ids)} tokens; at most {self.limits.max_prompt_tokens}")
        return ids

    def outputs(self, handles: list) -> Iterator[tuple[int, RequestOutput]]:
        """Every handle's outputs as they come, tagged with the handle's index (one feeding thread per handle)."""
        merged: queue.SimpleQueue = queue.SimpleQueue()

        def feed(index: int, handle) -> None:
            try:
                for out in observed(handle, self.metrics):
                    merged.put((index, out))
            except BaseException as exc:  # a lost replica: the stream ends with the error
                merged.put((index, exc))

        for index, handle in enumerate(handles):
            threading.Thread(target=feed, args=(index, handle), daemon=True, name="http-feed").start()
        open_handles = len(handles)
        while open_handles:
            index, item = merged.get()
            if isinstance(item, BaseException):
                raise item
            open_handles -= item.finished
            yield index, item

    def finished(self, handles: list) -> list[RequestOutput]:
        last: dict[int, RequestOutput] = {}
        for index, out in self.outputs(handles):
            last[index] = out
        return [last[i] for i in range(len(handles))]


# ------------------------------------------------------------------------------------------------ the app
def build_app(front: OpenAIFrontend) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        yield

    app = FastAPI(title="mirrorspec", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.middleware("http")
    async def bearer(request: Request, call_next):
        sent = request.headers.get("authorization", "")
        if request.url.path.startswith("/v1/") and not bearer_ok(front.token, sent):  # /health, /metrics: open
            return _error(401, "a valid bearer token is required (Authorization: Bearer ...)",
                          "invalid_request_error", code="invalid_api_key")
        return await call_next(request)

    if front.metrics is not None:
        @app.get("/metrics")
        async def metrics():  # Prometheus on the HTTP port too, as vLLM's /metrics
            return Response(generate_latest(front.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0]
        field = _error_field(first)
        return _error(400, f"{field}: {first['msg']}", "invalid_request_error", field)

    @app.exception_handler(HttpError)
    async def http_error(_request, exc: HttpError):
        return _error(exc.status, str(exc), exc.kind, exc.param, exc.code)

    @app.exception_handler(InvalidRequestError)
    async def bad_request(_request, exc: InvalidRequestError):
        return _error(400, str(exc), "invalid_request_error", exc.field)

    @app.exception_handler(QueueFull)
    async def queue_full(_request, exc: QueueFull):
        return _error(429, f"queue full: {exc}", "rate_limit_error")

    @app.exception_handler(Stopping)
    async def stopping(_request, exc: Stopping):
        return _error(503, str(exc), "server_error")

    @app.get("/health")
    async def health():
        up = not front.draining.is_set() and front.backend.load()["up"]
        return JSONResponse({"status": "ok" if up else "unavailable"}, 200 if up else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": front.model.model_id, "object": "model", "created": 0,
                                            "owned_by": "mirrorspec", "max_model_len": front.model.max_model_len}]}

    @app.post("/v1/completions")
    async def completions(request: oa.CompletionRequest):
        front.check(request)
        prompts = _completion_prompts(front, request.prompt)
        sampling = oa.sampling_params(request, max_tokens=request.max_tokens,
                                      default_max_tokens=oa.COMPLETIONS_MAX_TOKENS, logprobs=request.logprobs,
                                      logprobs_field="logprobs",
                                      prompt_logprobs=request.logprobs if request.echo else None)
        return await _respond(front, request, prompts, sampling, "logprobs", _CompletionRender)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: oa.ChatCompletionRequest):
        front.check(request)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content, i)}
                    for i, m in enumerate(request.messages)]
        prompts = [front.encode(messages, True, "messages")]
        top = request.top_logprobs or 0
        sampling = oa.sampling_params(request, max_tokens=request.max_completion_tokens or request.max_tokens,
                                      default_max_tokens=front.default_max_tokens,
                                      logprobs=top if request.logprobs else None, logprobs_field="top_logprobs")
        return await _respond(front, request, prompts, sampling, "top_logprobs", _ChatRender)

    return app


async def _respond(front: OpenAIFrontend, request, prompts: list[list[int]], sampling: SamplingParams,
                   logprobs_field: str, render_class: type):
    """Queue the request's choices, then answer whole or as a stream of server-sent events."""
    spec = oa.spec_params(request, front.default_spec, front.model.methods)
    handles = await run_in_threadpool(front.submit, prompts, sampling, spec, request.n, logprobs_field)
    render = render_class(front, request, prompts)
    if request.stream:
        return _sse(front, handles, render)
    return render.whole(await _finished(front, handles))


async def _finished(front: OpenAIFrontend, handles: list) -> list[RequestOutput]:
    """The handles' last outputs; if the client goes away first (the task is cancelled), its requests are."""
    try:
        return await run_in_threadpool(front.finished, handles)
    finally:
        for handle in handles:
            handle.cancel()


def _sse(front: OpenAIFrontend, handles: list, render) -> StreamingResponse:
    async def events():
        try:
            async for index, out in iterate_in_threadpool(front.outputs(handles)):
                for chunk in render.chunks(index, out):
                    yield f"data: {json.dumps(chunk)}\n\n"
            if render.request.stream_options is not None and render.request.stream_options.include_usage:
                yield f"data: {json.dumps(render.usage_chunk())}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # done, or the client disconnected: nothing is left running for it
            for handle in handles:
                handle.cancel()

    return StreamingResponse(events(), media_type="text/event-stream")


def _text(content, index: int) -> str:
    """A message's content: text, or OpenAI's list of parts of type text."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidRequestError(f"messages[{index}].content", "only text parts are offered")
        parts.append(part["text"])
    return "".join(parts)


def _error_field(error: dict) -> str:
    """The request field a validation error is about, as the client wrote it: pydantic's location less "body"
    and the union member it tried (`prompt.str` -> `prompt`); a body that is no JSON at all is the body."""
    if error["type"] == "json_invalid":
        return "body"
    parts = [str(part) for part in error["loc"][1:]]
    return ".".join(p for p in parts if p not in _UNION_MEMBERS and "[" not in p) or "body"


_UNION_MEMBERS = {"str", "int", "float", "bool", "none"}


def _completion_prompts(front: OpenAIFrontend, prompt) -> list[list[int]]:
    """Text, texts, token ids, or lists of token ids: each one prompt, sent as is (no chat template)."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        return [front.encode(prompt, False, "prompt")]
    if not prompt:
        raise InvalidRequestError("prompt", "is empty")
    return [front.encode(p, False, f"prompt[{i}]") for i, p in enumerate(prompt)]


class _Render:
    """Turns outputs into OpenAI's JSON for one call: whole responses and stream chunks."""

    def __init__(self, front: OpenAIFrontend, request, prompts: list[list[int]]) -> None:
        self.front, self.request, self.prompts = front, request, prompts
        self.id, self.created = oa.new_id(self.PREFIX), oa.created()
        self.n = request.n
        self.last: dict[int, RequestOutput] = {}

    def envelope(self, kind: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.front.model.model_id,
                "choices": choices}

    def usage_chunk(self) -> dict:
        outs = [self.last[i] for i in sorted(self.last)]
        return {**self.envelope(self.CHUNK, []), "usage": oa.usage(outs, self._choice_prompts())}

    def _choice_prompts(self) -> list[list[int]]:
        return [p for p in self.prompts for _ in range(self.n)]

    def _extra(self, out: RequestOutput) -> dict:
        return {"speculation": oa.speculation_stats(out)} if out.finished else {}


class _CompletionRender(_Render):
    PREFIX, CHUNK = "cmpl", "text_completion"

    def __init__(self, front: OpenAIFrontend, request, prompts: list[list[int]]) -> None:
        super().__init__(front, request, prompts)
        # Each prompt's echo, decoded once: every stream chunk needs its length.
        self.echoes = [front.model.tokenizer.decode(p) if request.echo else "" for p in prompts]

    def _echo(self, index: int) -> str:
        return self.echoes[index // self.n]

    def _choice(self, index: int, out: RequestOutput, text: str, logprobs, offset: int, first: bool) -> dict:
        """One choice; its first text (and logprobs) echo the prompt when asked: the prompt's tokens with the
        target's logprobs of each after the first (OpenAI's legacy `echo` with `logprobs`)."""
        items = None
        if logprobs is not None:
            ids, entries = [i.token_id for i in logprobs], list(logprobs)
            if first and self.request.echo:
                ids, entries, offset = self.prompts[index // self.n] + ids, [None, *out.prompt_logprobs, *entries], 0
            items = oa.completion_logprobs(self.front.model.tokenizer, ids, entries, offset)
        return {"index": index, "text": text, "logprobs": items, "finish_reason": oa.finish_reason(out),
                **self._extra(out)}

    def whole(self, outs: list[RequestOutput]) -> dict:
        self.last = dict(enumerate(outs))
        choices = [self._choice(i, o, self._echo(i) + o.text, o.logprobs, len(self._echo(i)), True)
                   for i, o in enumerate(outs)]
        return {**self.envelope("text_completion", choices), "usage": oa.usage(outs, self._choice_prompts())}

    def chunks(self, index: int, out: RequestOutput) -> list[dict]:
        first = index not in self.last
        self.last[index] = out
        text = (self._echo(index) if first else "") + out.new_text
        offset = len(out.text) - len(out.new_text) + len(self._echo(index))
        return [self.envelope(self.CHUNK, [self._choice(index, out, text, out.new_logprobs, offset, first)])]


class _ChatRender(_Render):
    PREFIX, CHUNK = "chatcmpl", "chat.completion.chunk"

    def _logprobs(self, items):
        return None if items is None else oa.chat_logprobs(self.front.model.tokenizer, items)

    def whole(self, outs: list[RequestOutput]) -> dict:
        self.last = dict(enumerate(outs))
        choices = [{"index": i, "message": {"role": "assistant", "content": o.text},
                    "logprobs": self._logprobs(o.logprobs), "finish_reason": oa.finish_reason(o), **self._extra(o)}
                   for i, o in enumerate(outs)]
        return {**self.envelope("chat.completion", choices), "usage": oa.usage(outs, self._choice_prompts())}

    def chunks(self, index: int, out: RequestOutput) -> list[dict]:
        chunks = []
        if index not in self.last:  # OpenAI opens each choice with the role
            chunks.append(self.envelope(self.CHUNK, [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                      "logprobs": None, "finish_reason": None}]))
        self.last[index] = out
        delta = {"content": out.new_text} if out.new_text or not out.finished else {}
        chunks.append(self.envelope(self.CHUNK, [{"index": index, "delta": delta,
                                                  "logprobs": self._logprobs(out.new_logprobs),
                                                  "finish_reason": oa.finish_reason(out), **self._extra(out)}]))
        return chunks


class HttpServer:
    """uvicorn serving the frontend's app on a thread of its own; `address` once it listens."""

    def __init__(self, front: OpenAIFrontend, *, host: str, port: int, tls_cert: str | None = None,
                 tls_key: str | None = None) -> None:
        self.front = front
        config = uvicorn.Config(build_app(front), host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key,
                                log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="http")
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise InvalidRequestError("serve.http_port", f"cannot listen on {host}:{port}")
            self.thread.join(0.02)
        bound = self.server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if tls_cert else "http"
        self.address = f"{scheme}://{host}:{bound}"

    def drain(self) -> None:
        """New requests get 503; those in flight finish."""
        self.front.draining.set()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
