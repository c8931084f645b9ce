"""The public gRPC server: GenerationService plus grpc.health.v1 and server reflection, behind optional TLS and a
bearer token.

- Auth and malformed messages: protos/gate.py (the bearer token, INVALID_ARGUMENT naming a field that is not UTF-8).
- Limits: the largest message, and the most RPCs in flight at once (streams included); past that gRPC itself
  answers RESOURCE_EXHAUSTED.
- Health: SERVING while `is_up()` holds (the models and the drafter answer), NOT_SERVING otherwise and while
  draining; checked every `health_period_s`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mirrorspec.errors import InvalidRequestError
from mirrorspec.protos import admin_pb2, admin_pb2_grpc
from mirrorspec.protos import generation_pb2_grpc as pb_grpc
from mirrorspec.protos.gate import SERVICE, Gate
from mirrorspec.serving.generation_service import GenerationService

logger = logging.getLogger(__name__)

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


@dataclass(frozen=True)
class ServerSecurity:
    token: str | None = None  # bearer token every RPC must carry (None: no auth)
    tls_cert: bytes | None = None  # PEM; with tls_key, the port speaks TLS only
    tls_key: bytes | None = None


@dataclass(frozen=True)
class ServerLimits:
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rpcs: int = 256
    threads: int = 64


class GenerationServer:
    """The running server: its address, its health, and a graceful stop."""

    def __init__(self, servicer: GenerationService, *, host: str, port: int,
                 security: ServerSecurity, limits: ServerLimits, is_up: Callable[[], bool],
                 admin: admin_pb2_grpc.AdminServiceServicer | None = None, health_period_s: float = 0.5) -> None:
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=limits.threads), interceptors=[Gate(security.token)],
            maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
            options=[("grpc.max_receive_message_length", limits.max_message_bytes),
                     ("grpc.max_send_message_length", limits.max_message_bytes)])
        self.servicer = servicer
        pb_grpc.add_GenerationServiceServicer_to_server(servicer, self.server)
        names = [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if admin is not None:
            admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, self.server)
            names.append(ADMIN_SERVICE)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(names, self.server)
        if security.tls_cert is not None:
            credentials = grpc.ssl_server_credentials([(security.tls_key, security.tls_cert)])
            bound = self.server.add_secure_port(f"{host}:{port}", credentials)
        else:
            bound = self.server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise InvalidRequestError("serve.port", f"cannot listen on {host}:{port} (in use, or not this host's)")
        self.address = f"{host}:{bound}"
        self.is_up = is_up
        self._draining = threading.Event()
        self._stopped = threading.Event()
        self._set_health(False)
        self.server.start()
        self._watch = threading.Thread(target=self._watch_health, args=(health_period_s,), daemon=True,
                                       name="health")
        self._watch.start()

    def _set_health(self, up: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            self.health.set(name, status)

    def _watch_health(self, period_s: float) -> None:
        last = None
        while not self._stopped.wait(0 if last is None else period_s):
            try:
                up = not self._draining.is_set() and bool(self.is_up())
            except Exception:  # a failing probe is a down backend, not a dead watcher
                up = False
            if up != last:
                self._set_health(up)
                logger.info("health: %s", "SERVING" if up else "NOT_SERVING")
                last = up

    def drain(self) -> None:
        """Report NOT_SERVING (load balancers stop sending) and refuse new requests (UNAVAILABLE) before the
        backend drains the ones in flight."""
        self._draining.set()
        self.servicer.drain()
        self._set_health(False)

    def stop(self, grace_s: float = 5.0) -> None:
        self._stopped.set()
        self.server.stop(grace_s).wait()
