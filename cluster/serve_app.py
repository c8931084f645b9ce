"""The Ray Serve application: Serve's HTTP and gRPC proxies -> the Ingress deployment -> the EngineReplica
deployment (cluster/serve_replicas.py).

It is what `serve run configs/serve.yaml` and `serve deploy configs/serve.yaml` run (import path
`mirrorspec.cluster.serve_app:app_builder`, args `{config: <a ray_config.yaml>}`), and what `mirrorspec serve` runs
with `serve.ingress: serve`. The Ingress holds the fronts a `mirrorspec serve` process holds otherwise
(cluster/serve.py: build_fronts), over the replicas' handle:
- behind Serve's HTTP proxy, the OpenAI-compatible FastAPI app, with /health and /metrics;
- behind Serve's gRPC proxy, TGIS's fmaas.GenerationService, grpc.health.v1 (Check) and the AdminService: Serve
  calls the Ingress method named like the RPC. With one application on the cluster Serve routes every call to it, so
  an unmodified TGIS client needs no `application` metadata.

Serve's gRPC proxy has no TLS (Ray's gRPCOptions have none) and none of our message-size and concurrency bounds:
where gRPC needs TLS, keep `serve.ingress: process` (the default), or terminate TLS in front of Serve.
"""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from mirrorspec.cluster.config import ProjectConfig, for_own_target, load_config
from mirrorspec.cluster.serve import build_fronts, served
from mirrorspec.cluster.serve_replicas import APP, ServeBackend, replica_deployment, serve, start_serve
from mirrorspec.errors import InvalidRequestError
from mirrorspec.protos import admin_pb2
from mirrorspec.protos import generation_pb2 as pb
from mirrorspec.protos.gate import SERVICE, bearer_ok
from mirrorspec.serving.openai_http import build_app

INGRESS = "Ingress"
GRPC_SERVICERS = ["mirrorspec.protos.generation_pb2_grpc.add_GenerationServiceServicer_to_server",
                  "mirrorspec.protos.admin_pb2_grpc.add_AdminServiceServicer_to_server",
                  "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server"]


class _Aborted(Exception):
    """An RPC answered with an error status, set on Serve's gRPC context: unwinds the servicer."""


class ServeRpcContext:
    """What the servicers use of grpc.ServicerContext, over Serve's RayServegRPCContext."""

    def __init__(self, context) -> None:
        self.context = context
        self.callbacks = []

    def abort(self, code: grpc.StatusCode, details: str):
        _set_status(self.context, code, details)
        raise _Aborted(details)

    def add_callback(self, callback) -> bool:
        self.callbacks.append(callback)  # run if Serve cancels the call (the client left, its deadline passed)
        return True

    def cancelled(self) -> None:
        for callback in self.callbacks:
            callback()


@serve.ingress()
class Ingress:
    """The application's ingress: its fronts run in a thread pool (they block on the replicas' streams), so a
    call Serve cancels (client gone, deadline) cancels its requests in the replicas."""

    def __init__(self, project: ProjectConfig, replicas) -> None:
        project, model = served(project)
        self.fronts = build_fronts(ServeBackend(project, replicas), project, model)
        self.token = project.serve.token()
        self.pool = ThreadPoolExecutor(project.serve.max_concurrent_rpcs, thread_name_prefix="ingress")

    def __serve_build_asgi_app__(self):
        return build_app(self.fronts.openai)

    # ------------------------------------------------------------------------ gRPC, by RPC name
    async def Generate(self, request, grpc_context):
        return await self._unary(self.fronts.service.Generate, request, grpc_context, pb.BatchedGenerationResponse)

    async def Tokenize(self, request, grpc_context):
        return await self._unary(self.fronts.service.Tokenize, request, grpc_context, pb.BatchedTokenizeResponse)

    async def ModelInfo(self, request, grpc_context):
        return await self._unary(self.fronts.service.ModelInfo, request, grpc_context, pb.ModelInfoResponse)

    async def Scale(self, request, grpc_context):
        if self.fronts.admin is None:
            return _error(grpc_context, grpc.StatusCode.UNIMPLEMENTED, "the admin service is off (serve.admin)",
                          admin_pb2.ScaleResponse)
        return await self._unary(self.fronts.admin.Scale, request, grpc_context, admin_pb2.ScaleResponse)

    async def GenerateStream(self, request, grpc_context):
        """A stream's status travels with its messages: one refused before any message must raise (Serve then
        answers with the status set on the context) where a unary call returns an empty reply."""
        context = ServeRpcContext(grpc_context)
        if not self._authorized(grpc_context):
            raise _Aborted("unauthenticated")
        messages = self.fronts.service.GenerateStream(request, context)
        loop = asyncio.get_running_loop()
        try:
            while (message := await loop.run_in_executor(self.pool, next, messages, None)) is not None:
                yield message
        except asyncio.CancelledError:
            context.cancelled()
            raise

    async def Check(self, request: health_pb2.HealthCheckRequest, grpc_context) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1, open without the token (probes call it so): SERVING while a replica serves."""
        if request.service not in ("", SERVICE):
            return _error(grpc_context, grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}",
                          health_pb2.HealthCheckResponse)
        load = await asyncio.get_running_loop().run_in_executor(self.pool, self.fronts.service.backend.load)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING if load["up"]
                                              else health_pb2.HealthCheckResponse.NOT_SERVING)

    def _authorized(self, grpc_context) -> bool:
        """With a token configured, the call must carry it; else its status is set to UNAUTHENTICATED."""
        if bearer_ok(self.token, dict(grpc_context.invocation_metadata()).get("authorization", "")):
            return True
        _set_status(grpc_context, grpc.StatusCode.UNAUTHENTICATED,
                    "a valid bearer token is required (authorization: Bearer ...)")
        return False

    async def _unary(self, method, request, grpc_context, reply_type):
        """An error answers with its status set on the context and an empty reply (Serve's way: raising would log
        a traceback for every refused request)."""
        context = ServeRpcContext(grpc_context)
        if not self._authorized(grpc_context):
            return reply_type()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, method, request, context)
        except _Aborted:
            return reply_type()
        except asyncio.CancelledError:
            context.cancelled()
            raise


def _set_status(grpc_context, code: grpc.StatusCode, details: str) -> None:
    grpc_context.set_code(code)
    grpc_context.set_details(details)


def _error(grpc_context, code: grpc.StatusCode, details: str, reply_type):
    _set_status(grpc_context, code, details)
    return reply_type()


def application(project: ProjectConfig):
    """The Ingress bound to the EngineReplica deployment: the application Serve runs."""
    ingress = serve.deployment(Ingress, name=INGRESS).options(
        max_ongoing_requests=project.serve.max_concurrent_rpcs, ray_actor_options={"num_cpus": 0},
        graceful_shutdown_timeout_s=project.serve.drain_timeout_s)
    return ingress.bind(project, replica_deployment(project))


def app_builder(args: dict):
    """`serve run` / `serve deploy`'s import path. args: `config`, the project's ray_config.yaml (a path as the
    process that builds the application sees it); without it, the built-in defaults."""
    unknown = sorted(set(args) - {"config"})
    if unknown:
        raise InvalidRequestError(f"args.{unknown[0]}", "unknown; the application takes `config`")
    project = load_config(Path(args["config"])) if "config" in args else ProjectConfig()
    engine, spec = for_own_target(project.engine, project.speculation)
    return application(dataclasses.replace(project, engine=engine, speculation=spec))


def run_application(project: ProjectConfig) -> bool:
    """`mirrorspec serve` with serve.ingress: serve: Serve's proxies on serve.host, HTTP on serve.http_port and gRPC
    on serve.port, then the application. Returns whether this call started Serve (then the caller shuts it down)."""
    config = project.serve
    started = start_serve(project, proxy_location="HeadOnly",
                          http_options={"host": config.host, "port": config.http_port},
                          grpc_options={"port": config.port, "grpc_servicer_functions": GRPC_SERVICERS})
    serve.run(application(project), name=APP, route_prefix="/",
              external_scaler_enabled=config.autoscaling() is None)
    return started
