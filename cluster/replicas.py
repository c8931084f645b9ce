"""What serves requests inside a replica (cluster/serve_replicas.py): an engine's EngineLoop behind submit / poll /
cancel, called from several threads at once. A replica that is one process serves an engine it holds itself; a
pipeline replica's target actor (`ServingTargetActor`, rank 0 under tensor parallelism) serves its own, its
drafter remote. A poll long-waits for the request's next outputs, so that a caller on another process streams
them with one call per engine step.
"""

from __future__ import annotations

import queue
import threading
import time

from mirrorspec.cluster.actors import TargetActor
from mirrorspec.orchestration.engine import Engine
from mirrorspec.orchestration.outputs import RequestOutput
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.serving.engine_loop import EngineLoop, Handle

POLL_S = 0.5  # a poll returns at once when outputs are ready, else after this long with none
FORGET_S = 60.0  # a cancelled request's outputs are kept this long for a poller, then dropped (its client has gone)


class EngineServing:
    """A served engine: polls, cancels and submits arrive on several threads at once."""

    def serve_engine(self, engine: Engine, max_in_flight: int) -> None:
        self.loop = EngineLoop(engine, max_in_flight=max_in_flight)
        self.handles: dict[str, Handle] = {}
        self._cancelled: dict[str, float] = {}  # request id -> when: nobody may poll these again
        self._lock = threading.Lock()

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
        with self._lock:
            self.handles.pop(request_id, None)
            self._cancelled.pop(request_id, None)

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
        """The client asked to stop, or has gone: nobody polls this request again (its outputs are dropped after
        FORGET_S)."""
        with self._lock:
            self._cancelled[request_id] = time.monotonic()
        self.loop.cancel(request_id)

    def load(self) -> dict:
        return self.loop.load()


class ServingTargetActor(TargetActor, EngineServing):
    """A pipeline's target actor (rank 0 under tensor parallelism) that serves requests: a replica whose drafter
    is its own actor on its own resources, behind the speculation channel, drafting while the target verifies."""

    def __init__(self, *args, max_in_flight: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.serve_engine(self.engine, max_in_flight)
