"""`mirrorspec serve`: the public GenerationService over this config's engine, until SIGTERM/SIGINT.

On a signal the server drains: health goes NOT_SERVING at once (load balancers stop sending), new requests get
UNAVAILABLE, the ones in flight finish (up to `serve.drain_timeout_s`), then the port closes.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from pathlib import Path

from mirrorspec.cluster.config import ProjectConfig
from mirrorspec.orchestration.engine import Engine
from mirrorspec.orchestration.engine_loop import EngineLoop
from mirrorspec.orchestration.errors import InvalidRequestError
from mirrorspec.orchestration.generation_service import GenerationService, Limits, ServedModel
from mirrorspec.orchestration.grpc_server import GenerationServer, ServerLimits, ServerSecurity
from mirrorspec.orchestration.metrics import ServingMetrics
from mirrorspec.orchestration.params import AR_DRAFTED, SamplingParams

logger = logging.getLogger(__name__)


def served_methods(engine: Engine) -> tuple[str, ...]:
    """What this engine can run: `ar`, plus the methods of the drafter it loaded."""
    if engine.drafter is None:
        return ("ar",)
    if getattr(engine.drafter, "drafts_by_diffusion", False):
        return ("ar", "diffusion-draft")
    return ("ar", *AR_DRAFTED)


def start_server(project: ProjectConfig) -> tuple[GenerationServer, EngineLoop, str | None]:
    """The server, its engine loop and the metrics endpoint's address (None: metrics off)."""
    serve = project.serve
    engine = Engine.from_config(project.engine)
    methods = served_methods(engine)
    if project.speculation.method not in methods:
        raise InvalidRequestError("speculation.method", f"{project.speculation.method} cannot run with this "
                                                        f"drafter; it serves {', '.join(methods)}")
    loop = EngineLoop(engine, max_in_flight=project.engine.max_batch + serve.max_queue)
    target = engine.target.loaded
    model = ServedModel(model_id=serve.model_id or Path(target.path).name, tokenizer=engine.tokenizer,
                        vocab_size=engine.target.vocab_size, max_model_len=engine.max_model_len,
                        drafter=project.engine.drafter, methods=methods)
    metrics = ServingMetrics(lambda: {"num_requests_running": loop.running(), "num_requests_waiting": loop.waiting(),
                                      "num_replicas": 1})
    metrics_address = None
    if serve.metrics_port is not None:
        _, bound = metrics.serve(serve.host, serve.metrics_port)
        metrics_address = f"http://{serve.host}:{bound}/metrics"
    service = GenerationService(loop, model, sampling=SamplingParams(max_new_tokens=serve.default_max_new_tokens),
                                spec=project.speculation,
                                limits=Limits(max_prompt_tokens=serve.max_prompt_tokens,
                                              max_new_tokens=serve.max_new_tokens,
                                              max_batch_prompts=serve.max_batch_prompts), metrics=metrics)
    security = ServerSecurity(token=serve.token(),
                              tls_cert=None if serve.tls_cert is None else Path(serve.tls_cert).read_bytes(),
                              tls_key=None if serve.tls_key is None else Path(serve.tls_key).read_bytes())

    def is_up() -> bool:  # the engine thread runs and the drafter (if any) answers
        return loop.alive and engine.scheduler.drafter_failures == 0

    server = GenerationServer(service, host=serve.host, port=serve.port, security=security,
                              limits=ServerLimits(max_message_bytes=serve.max_message_bytes,
                                                  max_concurrent_rpcs=serve.max_concurrent_rpcs),
                              is_up=is_up)
    return server, loop, metrics_address


def run_server(project: ProjectConfig, *, host: str | None = None, port: int | None = None) -> int:
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    project = dataclasses.replace(project, serve=dataclasses.replace(project.serve, **overrides).validate())
    server, loop, metrics_address = start_server(project)
    print(f"serving mirrorspec.generation.v1.GenerationService on {server.address}"
          + (f"; metrics on {metrics_address}" if metrics_address else ""), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    logger.warning("draining: %d requests in flight", loop.in_flight)
    server.drain()
    loop.stop(drain=True, timeout_s=project.serve.drain_timeout_s)
    server.stop(grace_s=1.0)
    return 0
