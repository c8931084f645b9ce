"""Engine replicas on Ray Serve: one Serve deployment whose replicas each serve an engine, so that Serve places
them, routes each request to a replica with room, queues the rest, autoscales, health-checks and replaces them,
and retires them gracefully (a retiring replica finishes its requests first).

A replica serves either an engine in its own process (`cluster.target`'s resources), or a whole speculation
pipeline (what Mirror-SD and tensor parallelism need): the replica's placement group has a bundle per target rank
and one for the drafter, the pipeline's actors start in those bundles, and the replica (which takes no resources:
it forwards to the pipeline's serving target actor) sits in rank 0's. Either way the engine runs an EngineLoop
(continuous batching), reached through EngineServing's submit / poll / cancel (cluster/replicas.py).

Settings keep Serve's names (ray_config.yaml, serve): num_replicas (`replicas`), `autoscaling_config`
(min_replicas, max_replicas, target_ongoing_requests, upscale_delay_s, downscale_delay_s, ...),
`max_ongoing_requests` and `max_queued_requests`. The server process keeps the gRPC (TGIS) and OpenAI fronts and
reaches the replicas through a DeploymentHandle (`ServeBackend`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import ray
from prometheus_client.parser import text_string_to_metric_families

# Serve's router asks a replica for its queue length before routing to it, and gives up after 0.1 s by default;
# a replica whose two cores are busy with its engine often takes longer (measured under the 64-stream bench), and
# each miss logs a warning and retries. Read when ray.serve is first imported.
os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "1.0")

from ray import serve  # noqa: E402
from ray.serve._private.common import DeploymentID  # noqa: E402
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE  # noqa: E402

from mirrorspec.cluster.config import ProjectConfig
from mirrorspec.cluster.pipeline import actor_options, pipeline_roles, resources_of
from mirrorspec.cluster.ray_cluster import connect
from mirrorspec.cluster.replicas import EngineServing, ServingTargetActor
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.factory import build_engine
from mirrorspec.orchestration.outputs import RequestOutput
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.serving.engine_loop import QueueFull, ScaleBusy, Stopping

logger = logging.getLogger(__name__)

APP = "mirrorspec"
REPLICA_METRICS = "RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE"  # "0" in a replica: it reports its own load
DEPLOYMENT = "EngineReplica"


class EngineReplica:
    """One Serve replica. `generate` streams this replica's actor name once the engine took the request (or
    raises its refusal), then the request's outputs; a caller that goes away cancels it (Serve cancels the
    generator)."""

    def __init__(self, project: ProjectConfig, max_in_flight: int) -> None:
        self.pipeline = None
        if project.cluster.uses_ray(project.speculation.method):
            from mirrorspec.cluster.pipeline import Pipeline

            self.pipeline = Pipeline(project, target_actor=ServingTargetActor,
                                     target_kwargs={"max_in_flight": max_in_flight},
                                     target_concurrency=max_in_flight + 8,
                                     group=ray.util.get_current_placement_group())
            self.server = self.pipeline.target
        else:
            self.local = EngineServing()
            self.local.serve_engine(build_engine(project.engine), max_in_flight)
            self.pool = ThreadPoolExecutor(max_in_flight + 8, thread_name_prefix="replica")

    async def _call(self, name: str, *args):
        if self.pipeline is not None:
            return await getattr(self.server, name).remote(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, getattr(self.local, name), *args)

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams, spec: SpecParams,
                       time_limit_s: float | None):
        request_id = await self._call("submit", prompt_ids, sampling, spec, time_limit_s)
        yield ray.get_runtime_context().get_actor_name()  # accepted, here
        done = False
        try:
            while not done:
                for out in await self._call("poll", request_id):
                    yield out
                    done = out.finished
        finally:
            if not done:
                await self._call("cancel", request_id)

    async def load(self) -> dict:
        return await self._call("load")

    async def check_health(self) -> None:
        """Serve's health probe: a replica whose loop stopped, or one of whose tensor-parallel ranks died, is
        replaced."""
        if self.pipeline is not None:
            if not self.pipeline.group_alive():
                raise RuntimeError("a rank of this replica's target group died")
            await self._call("load")  # its serving target actor answers
        elif not self.local.loop.alive:
            raise RuntimeError("this replica's engine loop stopped")

    def __del__(self) -> None:
        if getattr(self, "pipeline", None) is not None:
            self.pipeline.shutdown()


def deployment_options(project: ProjectConfig, replicas: int) -> dict:
    """Serve's options for the replicas: resources (or a placement group for a pipeline), count or autoscaling,
    queue limits, graceful retirement."""
    serve_config, cluster = project.serve, project.cluster
    options = {"max_ongoing_requests": serve_config.ongoing_requests(project.engine.max_batch),
               "max_queued_requests": serve_config.max_queued_requests,
               "graceful_shutdown_timeout_s": serve_config.drain_timeout_s,
               "graceful_shutdown_wait_loop_s": 0.5, "health_check_period_s": 2.0}
    autoscaling = serve_config.autoscaling()
    if autoscaling is not None:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = replicas
    if cluster.uses_ray(project.speculation.method):
        # The replica only forwards: it takes no resources of its own and shares bundle 0 with target rank 0.
        options["placement_group_bundles"] = [dict(r.resources) for r in pipeline_roles(project)]
        options["placement_group_strategy"] = cluster.placement_strategy
        options["ray_actor_options"] = {"num_cpus": 0}
    else:
        options["ray_actor_options"] = actor_options(cluster.target)
    # Autoscaling counts each replica's ongoing requests as the replica reports them (Serve's planned default),
    # not as every handle reports what it sent: a handle in a process whose earlier replicas were killed stopped
    # reporting (measured: a deployment there never scaled up), and replica reports take precedence over handles'.
    options["ray_actor_options"]["runtime_env"] = {"env_vars": {REPLICA_METRICS: "0"}}
    return options


def replica_project(project: ProjectConfig) -> ProjectConfig:
    """What a replica builds: an engine replica's engine runs with cluster.target's threads."""
    if project.cluster.uses_ray(project.speculation.method):
        return project
    threads = project.cluster.target.threads or project.engine.threads
    return dataclasses.replace(project, engine=dataclasses.replace(project.engine, threads=threads))


def replica_demand(project: ProjectConfig) -> dict[str, float]:
    """The Ray resources one replica takes."""
    if project.cluster.uses_ray(project.speculation.method):
        return resources_of(pipeline_roles(project))
    return dict(project.cluster.target.resources)


class ServeRequest:
    """A request on a replica, as the service sees it: iterate for outputs, cancel to stop it."""

    def __init__(self, stream, backend: "ServeBackend", replica: str) -> None:
        self.stream, self.backend = stream, backend
        self.replica = replica  # the Serve replica's actor name (namespace "serve")
        self.done = False  # taken by a replica's engine (submit counted it running) until done

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.backend._move("running", None)

    def __iter__(self) -> Iterator[RequestOutput]:
        try:
            for out in self.stream:
                if out.finished:
                    self._finish()
                yield out
                if out.finished:
                    return
        except ray.exceptions.TaskCancelledError:
            return
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            if not replica_lost(exc):
                raise
            raise ReplicaLost("the replica holding this request died; retry it") from exc
        finally:
            self._finish()

    def cancel(self) -> None:
        self.stream.cancel()
        self._finish()


class ReplicaLost(Stopping):
    """The replica holding a request died: that request is lost, retryable (UNAVAILABLE); Serve replaces the
    replica and every other request goes on."""


def replica_lost(exc: BaseException) -> bool:
    """Whether a call failed because its replica died, or an actor of the replica's pipeline did (the replica's
    own call to it failed; Serve replaces the replica once its health check sees it)."""
    return isinstance(exc, ray.exceptions.RayActorError) or (
        isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, ray.exceptions.RayActorError))


def replica_deployment(project: ProjectConfig):
    """The EngineReplica deployment, bound: what every Serve application of this project routes requests to."""
    deployment = serve.deployment(EngineReplica, name=DEPLOYMENT).options(
        **deployment_options(project, project.serve.replicas))
    return deployment.bind(replica_project(project), project.serve.ongoing_requests(project.engine.max_batch))


def start_serve(project: ProjectConfig, **proxies) -> bool:
    """Connect to (or start) the Ray cluster and start Serve on it; without `proxies` (proxy_location,
    http_options, grpc_options) Serve runs no proxy: this process's own fronts take the traffic. Returns whether
    Serve was started here (then its caller shuts it down when done, and leaves alone a Serve it found running)."""
    connect(project.cluster)
    started = not serve_running()
    serve.start(**(proxies or {"proxy_location": "Disabled"}), logging_config={"log_level": "WARNING"})
    return started


def serve_running() -> bool:
    """Whether Serve runs on the connected Ray cluster (its controller is alive)."""
    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def deploy_replicas(project: ProjectConfig) -> "ServeBackend":
    """The replicas alone as the Serve application (`mirrorspec serve` with serve.ingress: process)."""
    started = start_serve(project)
    handle = serve.run(replica_deployment(project), name=APP, route_prefix=None,
                       external_scaler_enabled=project.serve.autoscaling() is None)
    return ServeBackend(project, handle, owns_serve=started)


class ServeBackend:
    """A front's backend over the EngineReplica deployment's handle: submit, scale, load, shutdown."""

    def __init__(self, project: ProjectConfig, handle, *, owns_serve: bool = False) -> None:
        self.project = project
        # One streaming handle, made here: `options()` creates the handle's router on first use without a lock
        # (Ray 2.60), so per-request options() from many front threads at once made several routers, each probing
        # the replicas and counting its queue on its own.
        self.handle = handle.options(stream=True)
        self.owns_serve = owns_serve
        self.demand = replica_demand(project)
        self.autoscaling = project.serve.autoscaling() is not None
        self._scaling = threading.Lock()
        self._count = threading.Lock()
        self._requests = {"waiting": 0, "running": 0}
        self.ongoing = project.serve.ongoing_requests(project.engine.max_batch)
        self._serving_count, self._serving_at = 0, float("-inf")

    # ---------------------------------------------------------------------------------- requests
    def submit(self, prompt_ids: list[int], sampling: SamplingParams, spec: SpecParams, *,
               time_limit_s: float | None = None) -> ServeRequest:
        self._queue()  # waits in Serve's queue until a replica takes it
        try:
            stream = self.handle.generate.remote(prompt_ids, sampling, spec, time_limit_s)
            replica = next(stream)  # the replica took it
        except BaseException as exc:
            self._move("waiting", None)
            if isinstance(exc, serve.exceptions.BackPressureError):
                raise self._full() from exc
            if replica_lost(exc):
                raise ReplicaLost("the replica taking this request died; retry it") from exc
            if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(
                    exc.cause, (InvalidRequestError, QueueFull, Stopping)):
                raise exc.cause from None
            raise
        self._move("waiting", "running")
        return ServeRequest(stream, self, replica)

    # ---------------------------------------------------------------------------------- replicas
    def _states(self) -> dict:
        app = serve.status().applications.get(APP)
        if app is None or DEPLOYMENT not in app.deployments:
            return {}
        return dict(app.deployments[DEPLOYMENT].replica_states)

    @property
    def replicas(self) -> int:
        return self._states().get("RUNNING", 0)

    def scale(self, replicas: int, *, timeout_s: float | None = None, wait: bool = True) -> None:
        """Serve's num_replicas: new replicas take requests once loaded; retired ones finish theirs first."""
        if replicas < 1:
            raise ValueError("at least one replica")
        if not self._scaling.acquire(blocking=wait):
            raise ScaleBusy("another Scale is under way; ask again when it has finished")
        try:
            # What Serve's REST scale endpoint (PUT .../deployments/{name}/scale) calls: the controller sets the
            # deployment's target replica count in place (redeploying would restart every replica).
            controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            ray.get(controller.update_deployment_replicas.remote(DeploymentID(name=DEPLOYMENT, app_name=APP),
                                                                 replicas))
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while self._states() != {"RUNNING": replicas}:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{replicas} replicas were not serving within {timeout_s:g} s "
                                       f"(now: {self._states()})")
                time.sleep(0.2)
        finally:
            self._scaling.release()

    def placement_problem(self, more: int) -> str | None:
        """Why `more` new replicas cannot be placed on the cluster's free resources now (None: they can)."""
        free = ray.available_resources()
        for resource, each in self.demand.items():
            if each and each * more > free.get(resource, 0.0) + 1e-9:
                return (f"{more} more replica(s) need {resource} {each * more:g}; the cluster has "
                        f"{free.get(resource, 0.0):g} free")
        return None

    def _queue(self) -> None:
        """Count a new request as waiting, or refuse it when serve.max_queued_requests already wait: when this
        front has that many in flight beyond what the serving replicas hold (max_ongoing_requests each). Serve's
        own check leaks under a burst: Ray 2.60's router does not count a request sent to a replica and waiting
        for its accept-or-reject answer, so while a busy replica answers slowly most of a burst slips past (measured:
        0 to 16 of the 16 requests over the bound of a 64-stream burst got through, run to run)."""
        bound = self.project.serve.max_queued_requests + self.ongoing * self._serving()
        with self._count:
            if self._requests["waiting"] + self._requests["running"] >= bound:
                raise self._full()
            self._requests["waiting"] += 1

    def _serving(self) -> int:
        """Serve's count of running replicas, asked of its controller at most once a second."""
        now = time.monotonic()
        if now - self._serving_at > 1.0:
            self._serving_count, self._serving_at = self.replicas, now
        return self._serving_count

    def _full(self) -> QueueFull:
        return QueueFull(f"every replica is full and {self.project.serve.max_queued_requests} requests wait "
                         f"(serve.max_queued_requests)")

    def _move(self, old: str | None, new: str | None) -> None:
        """A request moves from `old` to `new` ("waiting", "running"; None: not counted, arriving or gone)."""
        with self._count:
            if old is not None:
                self._requests[old] -= 1
            if new is not None:
                self._requests[new] += 1

    def load(self) -> dict:
        """Replicas serving (Serve's count), and this server's requests: waiting in Serve's queue for a replica
        with room, or running (taken by a replica's engine)."""
        with self._count:
            waiting, running = self._requests["waiting"], self._requests["running"]
        replicas = self.replicas
        return {"num_requests_running": running, "num_requests_waiting": waiting, "in_flight": waiting + running,
                "num_replicas": replicas, "up": replicas > 0}

    def shutdown(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Delete the application: Serve retires every replica, each finishing its requests first (within
        serve.drain_timeout_s)."""
        undeploy(self.owns_serve)


def undeploy(owns_serve: bool) -> None:
    """Delete the application (Serve retires its replicas gracefully); shut Serve down if it was started here."""
    serve.delete(APP, _blocking=True)
    if owns_serve:
        serve.shutdown()


class ServeSeries:
    """Ray Serve's own Prometheus series (`ray_serve_*`: requests, latencies, queued and ongoing requests,
    replicas, per deployment), read from each node's Ray metrics agent when Prometheus scrapes the engine's
    /metrics, so one scrape has both. A node whose agent does not answer within a second is left out."""

    def collect(self):
        families = {}
        here = ray.util.get_node_ip_address()
        for node in ray.nodes():
            if not (node.get("Alive") and node.get("MetricsExportPort")):
                continue
            host = "127.0.0.1" if node["NodeManagerAddress"] == here else node["NodeManagerAddress"]  # loopback
            url = f"http://{host}:{node['MetricsExportPort']}/metrics"
            try:
                text = urllib.request.urlopen(url, timeout=1.0).read().decode()
            except OSError:
                continue
            for family in text_string_to_metric_families(text):
                if not family.name.startswith("ray_serve_"):
                    continue
                if family.name in families:  # the same series from another node
                    families[family.name].samples.extend(family.samples)
                else:
                    families[family.name] = family
        yield from families.values()
