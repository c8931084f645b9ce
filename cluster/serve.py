"""`mirrorspec serve`: the public GenerationService over engine replicas, until SIGTERM/SIGINT.

By default the replicas are a Ray Serve deployment on the configured Ray cluster, or an embedded local one
(cluster/serve_replicas.py: `serve.replicas` of them, or Serve's autoscaling): each a whole speculation pipeline
(drafter actor + target rank actors) where the cluster config says Ray for the method (`mirror`, `tp_size > 1`,
`ray: always`), otherwise one replica holding the engine (`cluster.target.resources` and threads); `cluster.ray:
never` serves from one engine in this process. On a signal the server drains: health
goes NOT_SERVING at once (load balancers stop sending), new requests get UNAVAILABLE, the ones in flight finish (up
to `serve.drain_timeout_s`), then the port closes.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import threading
from pathlib import Path

from mirrorspec.cluster.config import ProjectConfig
from mirrorspec.errors import InvalidRequestError
from mirrorspec.methods import AR_DRAFTER, DIFFUSION_DRAFTER, drafted_by
from mirrorspec.orchestration.factory import build_engine
from mirrorspec.params import SamplingParams
from mirrorspec.serving.engine_loop import EngineLoop
from mirrorspec.serving.generation_service import AdminService, GenerationService, ServedModel
from mirrorspec.serving.grpc_server import GenerationServer, ServerLimits, ServerSecurity
from mirrorspec.serving.tgis_wire import Limits
from mirrorspec.serving.metrics import ServingMetrics
from mirrorspec.serving.openai_http import HttpServer, OpenAIFrontend

logger = logging.getLogger(__name__)


def served_methods(drafter: str | None) -> tuple[str, ...]:
    """What an engine with this (resolved) drafter runs: `ar`, plus its drafter's methods."""
    from mirrorspec.workers.diffusion_model import is_dllm_folder

    if not drafter:
        return drafted_by(None)
    return drafted_by(DIFFUSION_DRAFTER if drafter != "self" and is_dllm_folder(drafter) else AR_DRAFTER)


def _local_backend(project: ProjectConfig) -> EngineLoop:
    serve = project.serve
    return EngineLoop(build_engine(project.engine),
                      max_in_flight=serve.ongoing_requests(project.engine.max_batch) + serve.max_queued_requests)


def _serve_backend(project: ProjectConfig):
    from mirrorspec.cluster.serve_replicas import deploy_replicas

    return deploy_replicas(project)


@dataclasses.dataclass
class Fronts:
    """What answers clients, over one backend: TGIS's gRPC service, the OpenAI HTTP front, the admin service
    (None when serve.admin says so) and the metrics they record."""

    service: GenerationService
    openai: OpenAIFrontend
    admin: AdminService | None
    metrics: ServingMetrics


def served(project: ProjectConfig) -> tuple[ProjectConfig, ServedModel]:
    """The project with its drafter resolved, and the facts of the model it serves (its tokenizer loaded)."""
    from mirrorspec.orchestration.factory import resolve_drafter
    from mirrorspec.workers.models import load_model_info

    drafter = resolve_drafter(project.engine, project.speculation.method)
    project = dataclasses.replace(project, engine=dataclasses.replace(project.engine, drafter=drafter))
    methods = served_methods(drafter)
    if project.speculation.method not in methods:
        raise InvalidRequestError("speculation.method", f"{project.speculation.method} cannot run with this "
                                                        f"drafter; it serves {', '.join(methods)}")
    info = load_model_info(project.engine.target)
    max_model_len = min(project.engine.max_model_len,
                        getattr(info.config, "max_position_embeddings", None) or project.engine.max_model_len)
    return project, ServedModel(model_id=project.serve.model_id or Path(info.path).name, tokenizer=info.tokenizer,
                                vocab_size=info.config.vocab_size, max_model_len=max_model_len, drafter=drafter,
                                methods=methods)


def build_fronts(backend, project: ProjectConfig, model: ServedModel) -> Fronts:
    serve = project.serve
    metrics = ServingMetrics(backend.load, model.model_id)
    if not isinstance(backend, EngineLoop):  # replicas on Ray Serve: Serve's own series next to the engine's
        from mirrorspec.cluster.serve_replicas import ServeSeries

        metrics.registry.register(ServeSeries())
    limits = Limits(max_prompt_tokens=serve.max_prompt_tokens, max_new_tokens=serve.max_new_tokens,
                    max_batch_prompts=serve.max_batch_prompts)
    service = GenerationService(backend, model, sampling=SamplingParams(max_new_tokens=serve.default_max_new_tokens),
                                spec=project.speculation, limits=limits, metrics=metrics)
    openai = OpenAIFrontend(backend, model, project.speculation, serve.default_max_new_tokens, limits,
                            token=serve.token(), metrics=metrics)
    return Fronts(service, openai, _admin(serve, backend), metrics)


def start_server(project: ProjectConfig) -> tuple[GenerationServer, object, str | None, HttpServer | None]:
    """The gRPC server, its backend (an EngineLoop, or the Ray Serve replicas), the metrics address and the
    OpenAI-compatible HTTP server (None when serve.http_port is null)."""
    project, model = served(project)
    serve = project.serve
    backend = _local_backend(project) if project.cluster.ray == "never" else _serve_backend(project)
    fronts = build_fronts(backend, project, model)
    metrics_address = None
    if serve.metrics_port is not None:
        _, bound = fronts.metrics.serve(serve.host, serve.metrics_port)
        metrics_address = f"http://{serve.host}:{bound}/metrics"
    security = ServerSecurity(token=serve.token(),
                              tls_cert=None if serve.tls_cert is None else Path(serve.tls_cert).read_bytes(),
                              tls_key=None if serve.tls_key is None else Path(serve.tls_key).read_bytes())
    server = GenerationServer(fronts.service, host=serve.host, port=serve.port, security=security,
                              limits=ServerLimits(max_message_bytes=serve.max_message_bytes,
                                                  max_concurrent_rpcs=serve.max_concurrent_rpcs),
                              is_up=lambda: backend.load()["up"], admin=fronts.admin)
    http = None
    if serve.http_port is not None:
        http = HttpServer(fronts.openai, host=serve.host, port=serve.http_port, tls_cert=serve.tls_cert,
                          tls_key=serve.tls_key)
    return server, backend, metrics_address, http


def _admin(serve, backend) -> AdminService | None:
    """The AdminService, when serve.admin says so (by default: only behind a token, since any local process can
    reach the port)."""
    if not (serve.admin if serve.admin is not None else serve.token() is not None):
        return None
    return AdminService(backend, autoscaling=serve.autoscaling_config is not None, max_replicas=serve.max_replicas,
                        timeout_s=serve.scale_timeout_s)


def scale_server(address: str, replicas: int, *, token_env: str | None = None, tls_ca: str | None = None) -> int:
    """`mirrorspec scale N`: ask a running server for N replicas; print its replicas and load."""
    import json
    import os

    import grpc

    from mirrorspec.protos import admin_pb2, admin_pb2_grpc
    from mirrorspec.protos.gate import bearer

    if replicas < 0:
        raise InvalidRequestError("replicas", f"must be >= 0, got {replicas}")
    metadata = ()
    if token_env:
        if not os.environ.get(token_env):
            raise InvalidRequestError("token_env", f"${token_env} is empty")
        metadata = bearer(os.environ[token_env])
    channel = (grpc.secure_channel(address, grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())) if tls_ca
               else grpc.insecure_channel(address))
    try:
        reply = admin_pb2_grpc.AdminServiceStub(channel).Scale(admin_pb2.ScaleRequest(replicas=replicas),
                                                              metadata=metadata, timeout=600)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise InvalidRequestError("server", f"{address} has no admin service (serve.admin; by default it is "
                                                f"on only when the server has a token)") from None
        raise InvalidRequestError("server", f"{address}: {exc.code().name}: {exc.details()}") from None
    finally:
        channel.close()
    print(json.dumps({"replicas": reply.replicas, "in_flight": reply.in_flight, "running": reply.running,
                      "waiting": reply.waiting, "autoscaling": reply.autoscaling}))
    return 0


def _check_free(host: str, port: int | None, field: str) -> None:
    """Refuse a port another process listens on before any replica starts (0 and None take any free port)."""
    if not port:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InvalidRequestError(field, f"{host}:{port} is not free ({exc.strerror})") from None


def run_server(project: ProjectConfig, *, host: str | None = None, port: int | None = None,
               http_port: int | None = None) -> int:
    overrides = {k: v for k, v in (("host", host), ("port", port), ("http_port", http_port)) if v is not None}
    project = dataclasses.replace(project, serve=dataclasses.replace(project.serve, **overrides).validate())
    for name in ("port", "http_port", "metrics_port"):
        _check_free(project.serve.host, getattr(project.serve, name), f"serve.{name}")
    if project.serve.ingress == "serve":
        return _run_on_serve(project)
    server, backend, metrics_address, http = start_server(project)
    print(f"serving fmaas.GenerationService on {server.address}"
          + (f"; OpenAI-compatible HTTP on {http.address}/v1" if http else "")
          + (f"; metrics on {metrics_address}" if metrics_address else ""), flush=True)
    _wait_for_a_signal()
    logger.warning("draining: %d requests in flight", backend.load()["in_flight"])
    server.drain()
    if http is not None:
        http.drain()
    if isinstance(backend, EngineLoop):
        backend.stop(drain=True, timeout_s=project.serve.drain_timeout_s)
    else:
        backend.shutdown(drain=True, timeout_s=project.serve.drain_timeout_s)
    server.stop(grace_s=1.0)
    if http is not None:
        http.stop()
    return 0


def _wait_for_a_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _run_on_serve(project: ProjectConfig) -> int:
    """serve.ingress: serve: the Serve application (cluster/serve_app.py) behind Serve's proxies, until a signal;
    then Serve retires it gracefully (each replica finishes its requests first), and shuts down if started here."""
    from mirrorspec.cluster.serve_app import run_application
    from mirrorspec.cluster.serve_replicas import undeploy

    if project.cluster.ray == "never":
        raise InvalidRequestError("serve.ingress", "serve runs on Ray; cluster.ray is never")
    config = project.serve  # Serve takes no port 0: a free one is chosen here
    ports = {name: getattr(config, name) or _free_port(config.host) for name in ("port", "http_port")}
    project = dataclasses.replace(project, serve=dataclasses.replace(config, **ports))
    started = run_application(project)
    host = project.serve.host
    http = f"http://{host}:{ports['http_port']}"
    print(f"serving fmaas.GenerationService on {host}:{ports['port']}; OpenAI-compatible HTTP on {http}/v1; "
          f"metrics on {http}/metrics; through Ray Serve's proxies", flush=True)
    _wait_for_a_signal()
    undeploy(owns_serve=started)
    return 0
