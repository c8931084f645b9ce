"""Engine replicas on Ray, and the router that spreads requests over them.

A replica is either one actor holding a whole engine (target and drafter in one process: `ReplicaActor`), or a
whole speculation pipeline (the drafter's actor, the target's rank actors, one placement group) whose target actor
serves (`ServingTargetActor`): what Mirror-SD and tensor parallelism need. Either way the serving actor runs an
`EngineLoop`: requests join its running batch between steps (continuous batching). The router sends a request to the
live replica with the fewest requests in flight (a full one answers QueueFull and the next is tried), then
long-polls the replica for the request's outputs. Replicas are added or removed at run time: a removed replica takes
no new requests, finishes the ones it holds, hands out their last outputs, and only then stops, so scaling never
drops a request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ray

from mirrorspec.cluster.actors import TargetActor
from mirrorspec.cluster.config import AutoscalePolicy, ProjectConfig
from mirrorspec.orchestration.engine import Engine, EngineConfig
from mirrorspec.orchestration.factory import build_engine
from mirrorspec.orchestration.outputs import RequestOutput
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.serving.engine_loop import EngineLoop, Handle, QueueFull, ScaleBusy, Stopping

logger = logging.getLogger(__name__)

POLL_S = 0.5  # a poll returns at once when outputs are ready, else after this long with none
FORGET_S = 60.0  # a cancelled request's outputs are kept this long for a poller, then dropped (its client has gone)


class EngineServing:
    """A served engine inside a threaded Ray actor: polls, cancels and submits arrive on several threads at once.
    `ReplicaActor` serves an engine it holds itself; a pipeline's target actor serves its own (drafter remote)."""

    def _serve(self, engine: Engine, max_in_flight: int) -> None:
        self.loop = EngineLoop(engine, max_in_flight=max_in_flight)
        self.handles: dict[str, Handle] = {}
        self._cancelled: dict[str, float] = {}  # request id -> when: nobody may poll these again
        self._emptied = threading.Condition()

    def submit(self, prompt_ids: list[int], sampling: SamplingParams, spec: SpecParams,
               time_limit_s: float | None) -> str:
        handle = self.loop.submit(prompt_ids, sampling, spec, time_limit_s=time_limit_s)
        self.handles[handle.request_id] = handle
        now = time.monotonic()
        for request_id, when in list(self._cancelled.items()):
            if now - when > FORGET_S:
                self._forget(request_id)
        return handle.request_id

    def _forget(self, request_id: str) -> None:
        with self._emptied:
            self.handles.pop(request_id, None)
            self._cancelled.pop(request_id, None)
            self._emptied.notify_all()

    def poll(self, request_id: str, wait_s: float = POLL_S) -> list[RequestOutput]:
        """The request's outputs since the last poll (waiting up to `wait_s` for the first)."""
        handle = self.handles.get(request_id)
        if handle is None:
            return []
        try:
            outs = [handle.outputs.get(timeout=wait_s)]
        except queue.Empty:
            return []
        while not outs[-1].finished:
            try:
                outs.append(handle.outputs.get_nowait())
            except queue.Empty:
                break
        if outs[-1].finished:
            self._forget(request_id)
        return outs

    def cancel(self, request_id: str) -> None:
        """The client asked to stop, or has gone (the service cancels when an RPC ends early): a drain does not
        wait for this request's last output to be polled."""
        with self._emptied:
            self._cancelled[request_id] = time.monotonic()
            self._emptied.notify_all()
        self.loop.cancel(request_id)

    def load(self) -> dict:
        return self.loop.load()

    def drain(self, timeout_s: float | None = None) -> int:
        """Take no new requests, finish those in flight and wait until their outputs are all polled (but for
        cancelled ones); returns how many requests it still held when asked."""
        held = len(self.handles)
        self.loop.stop(drain=True, timeout_s=timeout_s)
        with self._emptied:
            self._emptied.wait_for(lambda: self.handles.keys() <= self._cancelled.keys(), timeout=timeout_s)
        return held


class ReplicaActor(EngineServing):
    """A replica that is one actor: the target and the drafter in its own process."""

    def __init__(self, engine: EngineConfig, *, max_in_flight: int) -> None:
        self._serve(build_engine(engine), max_in_flight)


def _get(ref):
    """ray.get, raising a replica's own exception (bad input, a full queue) as itself, not wrapped in Ray's."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if exc.cause is not None:
            raise exc.cause from None
        raise


class ServingTargetActor(TargetActor, EngineServing):
    """A pipeline's target actor (rank 0 under tensor parallelism) that serves requests: a replica whose drafter
    is its own actor on its own resources, behind the speculation channel, drafting while the target verifies."""

    def __init__(self, *args, max_in_flight: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._serve(self.engine, max_in_flight)


@dataclass
class Replica:
    """A started replica: `actor` serves EngineServing's calls; `close` frees every actor and resource it holds;
    `alive` is False once a part of it other than `actor` has died (a tensor-parallel rank)."""

    actor: object
    close: Callable[[], None]
    alive: Callable[[], bool] = lambda: True
    index: int = 0
    in_flight: int = 0
    retiring: bool = False


def actor_replica(actor) -> Replica:
    """A replica that is one actor (a ReplicaActor)."""
    return Replica(actor, close=lambda: ray.kill(actor))


def pipeline_replica(project: ProjectConfig, *, max_in_flight: int, concurrency: int) -> Replica:
    """A replica that is a whole speculation pipeline (drafter actor, target rank actors, one placement group)."""
    from mirrorspec.cluster.pipeline import Pipeline

    pipeline = Pipeline(project, target_actor=ServingTargetActor, target_kwargs={"max_in_flight": max_in_flight},
                        target_concurrency=concurrency)
    return Replica(pipeline.target, close=pipeline.shutdown, alive=pipeline.group_alive)


class ReplicaLost(Stopping):
    """The replica holding a request died (its process, node or device): that request is lost, retryable
    (UNAVAILABLE); the router replaces the replica and every other request goes on."""


class RemoteHandle:
    """A request on a replica, as the service sees it: iterate for outputs, cancel to free its slot."""

    def __init__(self, router: "ReplicaRouter", replica: Replica, request_id: str) -> None:
        self.router = router
        self.replica = replica
        self.request_id = request_id
        self._done = False
        self._released = False

    def __iter__(self) -> Iterator[RequestOutput]:
        try:
            while not self._done:
                try:
                    outs = ray.get(self.replica.actor.poll.remote(self.request_id))
                except ray.exceptions.RayActorError as exc:
                    self.router.lost(self.replica)
                    raise ReplicaLost(f"replica {self.replica.index} died with this request in flight; "
                                      f"retry it") from exc
                for out in outs:
                    yield out
                    if out.finished:
                        self._done = True
        finally:
            self._release()

    def cancel(self) -> None:
        """Stop the request; its client reads no more of it (as a replica's drain assumes of a cancelled one)."""
        if not self._done:
            self.replica.actor.cancel.remote(self.request_id)
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.router.release(self.replica)


class ReplicaRouter:
    """The backend of the GenerationService over Ray replicas."""

    def __init__(self, start_replica: Callable[[int], Replica], replicas: int,
                 demand: dict[str, float] | None = None) -> None:
        self.start_replica = start_replica  # index -> a started Replica
        self.demand = demand or {}  # Ray resources one replica takes
        self.autoscaler: "Autoscaler | None" = None  # set when serve.autoscale owns the count
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)  # a client stopped reading a replica's request
        self._scaling = threading.Lock()  # one scale() at a time: a Scale call, the autoscaler, a replacement
        self._live: list[Replica] = []
        self._wanted = replicas
        self._next_index = 0
        self.retirements: list[tuple[int, int]] = []  # (replica index, requests it finished while retiring)
        self.scale(replicas)

    @property
    def replicas(self) -> int:
        return len(self._live)

    def submit(self, prompt_ids: list[int], sampling: SamplingParams, spec: SpecParams, *,
               time_limit_s: float | None = None) -> RemoteHandle:
        with self._lock:
            order = sorted(self._live, key=lambda r: r.in_flight)
        if not order:
            raise Stopping("no replica is serving")
        refused: Exception | None = None
        for replica in order:
            with self._lock:
                replica.in_flight += 1  # counted before the call, so that concurrent requests spread out
            try:
                request_id = _get(replica.actor.submit.remote(prompt_ids, sampling, spec, time_limit_s))
            except (QueueFull, Stopping, ray.exceptions.RayActorError) as exc:  # full, retired or dead: the next
                if isinstance(exc, ray.exceptions.RayActorError):
                    self.lost(replica)
                    exc = ReplicaLost(f"replica {replica.index} died")
                refused = exc
                self.release(replica)
                continue
            except BaseException:
                self.release(replica)
                raise
            return RemoteHandle(self, replica, request_id)
        if isinstance(refused, QueueFull):
            raise QueueFull(f"all {len(order)} replicas are full") from None
        raise refused

    def release(self, replica: Replica) -> None:
        with self._lock:
            replica.in_flight -= 1
            self._released.notify_all()

    def _delivered(self, replica: Replica) -> None:
        """After a drain: wait until every client has read its request's last output from `replica` (the answer
        to the poll that fetched it may still be on its way), so that closing the replica cuts no answer off."""
        with self._lock:
            if not self._released.wait_for(lambda: replica.in_flight <= 0, timeout=FORGET_S):
                logger.warning("replica %d closed with %d requests still read by clients", replica.index,
                               replica.in_flight)

    def scale(self, replicas: int, *, timeout_s: float | None = None, wait: bool = True) -> None:
        """Start or retire replicas until `replicas` serve. Retired ones finish their requests first (in the
        background); new ones take requests once their models are loaded. Without `wait`, raise ScaleBusy if
        another scale is under way; new replicas not loaded within `timeout_s` are stopped (TimeoutError)."""
        if replicas < 1:
            raise ValueError("at least one replica")
        if not self._scaling.acquire(blocking=wait):
            raise ScaleBusy("another Scale is under way; ask again when it has finished")
        try:
            self._wanted = replicas
            self._scale(replicas, timeout_s)
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

    def _scale(self, replicas: int, timeout_s: float | None = None) -> None:
        started = []
        while len(self._live) + len(started) < replicas:
            started.append(self.start_replica(self._next_index))
            started[-1].index = self._next_index
            self._next_index += 1
        try:
            ray.get([r.actor.load.remote() for r in started], timeout=timeout_s)  # loaded and answering
        except ray.exceptions.GetTimeoutError:
            for replica in started:
                replica.close()
            self._wanted = len(self._live)
            raise TimeoutError(f"{len(started)} new replica(s) were not loaded within {timeout_s:g} s (stopped; "
                               f"{len(self._live)} serve)") from None
        with self._lock:
            self._live += started
            retiring = self._live[replicas:] if len(self._live) > replicas else []
            self._live = self._live[:replicas]
        for replica in retiring:
            replica.retiring = True
            threading.Thread(target=self._retire, args=(replica,), daemon=True,
                             name=f"retire-{replica.index}").start()
        logger.info("replicas: %d (%d started, %d retiring)", replicas, len(started), len(retiring))

    def lost(self, replica: Replica) -> None:
        """A replica died: stop routing to it, free what it held, and start a replacement in the background."""
        with self._lock:
            if replica not in self._live:
                return  # already known (several requests see one death)
            self._live.remove(replica)
        logger.error("replica %d died; starting a replacement", replica.index)
        replica.close()
        threading.Thread(target=self._replace, daemon=True, name=f"replace-{replica.index}").start()

    def _replace(self) -> None:
        with self._scaling:
            if self._wanted > len(self._live):  # unless a Scale call since then wanted fewer
                self._scale(self._wanted)

    def _retire(self, replica: Replica) -> None:
        try:
            held = ray.get(replica.actor.drain.remote())
            self._delivered(replica)
            logger.info("replica %d retired after finishing %d requests", replica.index, held)
            self.retirements.append((replica.index, held))
        except ray.exceptions.RayActorError:
            logger.error("replica %d died while retiring", replica.index)
        replica.close()

    def load(self) -> dict:
        refs = [(r, r.actor.load.remote()) for r in list(self._live)]
        loads = []
        for replica, ref in refs:
            try:
                load = ray.get(ref) if replica.alive() else None
            except ray.exceptions.RayActorError:
                load = None
            if load is None:
                self.lost(replica)
            else:
                loads.append(load)
        return {"num_requests_running": sum(x["num_requests_running"] for x in loads),
                "num_requests_waiting": sum(x["num_requests_waiting"] for x in loads),
                "in_flight": sum(x["in_flight"] for x in loads),
                "num_replicas": len(loads), "up": bool(loads) and all(x["up"] for x in loads)}

    def shutdown(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop every replica; with `drain`, after the requests in flight finish (waiting at most `timeout_s`)."""
        if self.autoscaler is not None:
            self.autoscaler.stop()
        with self._lock:
            live, self._live = self._live, []
            self._wanted = 0  # no replacements from now on
        if drain:
            ray.get([r.actor.drain.remote(timeout_s) for r in live])
            for replica in live:
                self._delivered(replica)
        for replica in live:
            replica.close()


class Autoscaler:
    """Scales a router between the policy's bounds from the queue it reads every period."""

    def __init__(self, router: ReplicaRouter, policy: AutoscalePolicy, slots_per_replica: int) -> None:
        self.router, self.policy, self.slots = router, policy, slots_per_replica
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="autoscaler")
        self._thread.start()

    def _run(self) -> None:
        p = self.policy
        busy_since = idle_since = None
        while not self._stop.wait(p.period_s):
            load, n = self.router.load(), self.router.replicas
            now = time.monotonic()
            busy = load["num_requests_waiting"] / n > p.target_waiting
            idle = not busy and load["in_flight"] <= (n - 1) * self.slots
            busy_since = (busy_since or now) if busy else None
            idle_since = (idle_since or now) if idle else None
            if busy and n < p.max_replicas and now - busy_since >= p.up_after_s:
                self.router.scale(n + 1)
                busy_since = None
            elif idle and n > p.min_replicas and now - idle_since >= p.down_after_s:
                self.router.scale(n - 1)
                idle_since = None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
