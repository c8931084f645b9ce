"""An Engine driven by its own thread, for callers on other threads (gRPC handlers, a replica actor's methods).

Requests join the running batch between steps (continuous batching). Each request gets a handle whose outputs
arrive through a queue, one per engine step that committed tokens. Cancelling a request, or passing its time
limit, aborts it in the engine at the next step boundary, which frees its slot at once. The number of requests in
flight (running and waiting) is bounded: past the bound, `submit` raises `QueueFull` instead of queueing without
end. `stop(drain=True)` refuses new requests and returns once the ones in flight are finished.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from mirrorspec.orchestration.engine import Engine, RequestOutput
from mirrorspec.orchestration.params import SamplingParams, SpecParams
from mirrorspec.orchestration.stats import RequestStats

logger = logging.getLogger(__name__)

CANCELLED = "cancelled"
TIME_LIMIT = "time_limit"


class QueueFull(Exception):
    """The engine has as many requests in flight as it may hold."""


class Stopping(Exception):
    """The loop is shutting down and takes no new requests."""


@dataclass
class Handle:
    """One request in flight: its outputs, in order, the last one finished."""

    request_id: str
    loop: "EngineLoop"
    outputs: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    arrival: float = field(default_factory=time.perf_counter)

    def __iter__(self) -> Iterator[RequestOutput]:
        while True:
            out = self.outputs.get()
            yield out
            if out.finished:
                return

    def cancel(self) -> None:
        self.loop.cancel(self.request_id)


class EngineLoop:
    def __init__(self, engine: Engine, *, max_in_flight: int, name: str = "engine-loop") -> None:
        self.engine = engine
        self.max_in_flight = max_in_flight
        self._lock = threading.Condition()
        self._handles: dict[str, Handle] = {}
        self._deadlines: dict[str, float] = {}
        self._stopping = False
        self._closed = False
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------- requests
    def submit(self, prompt: str | list[int], sampling: SamplingParams, spec: SpecParams, *, chat: bool = False,
               time_limit_s: float | None = None) -> Handle:
        """Queue a request (InvalidRequestError for bad input, QueueFull past the bound, Stopping when draining)."""
        with self._lock:
            if self._stopping:
                raise Stopping("the server is shutting down")
            if len(self._handles) >= self.max_in_flight:
                raise QueueFull(f"{len(self._handles)} requests in flight, the most this replica holds")
            request_id = self.engine.add_request(prompt, sampling, spec, chat=chat)
            handle = Handle(request_id, self)
            self._handles[request_id] = handle
            if time_limit_s:
                self._deadlines[request_id] = handle.arrival + time_limit_s
            self._lock.notify_all()
        return handle

    def cancel(self, request_id: str, reason: str = CANCELLED) -> None:
        """Abort a request now (between steps); its handle gets a last output with `reason`."""
        with self._lock:
            handle = self._handles.pop(request_id, None)
            self._deadlines.pop(request_id, None)
            if handle is None:
                return
            out = self.engine.abort(request_id, reason)
        handle.outputs.put(out or _ended(request_id, reason))

    @property
    def alive(self) -> bool:
        """The loop thread runs and takes requests."""
        return self._thread.is_alive() and not self._stopping

    @property
    def in_flight(self) -> int:
        return len(self._handles)

    replicas = 1

    def load(self) -> dict:
        """What metrics and health read: requests running and waiting, and whether the engine serves (its thread
        runs and its drafter, if any, answers)."""
        scheduler = self.engine.scheduler
        return {"num_requests_running": len(scheduler.running), "num_requests_waiting": len(scheduler.waiting),
                "num_replicas": 1, "in_flight": self.in_flight,
                "up": self.alive and scheduler.drafter_failures == 0}

    # ----------------------------------------------------------------------------------- the loop
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self.engine.has_unfinished() and not self._closed:
                    if self._stopping:
                        self._closed = True
                        self._lock.notify_all()
                        return
                    self._lock.wait()
                if self._closed:
                    return
                self._expire()
                try:
                    outputs = self.engine.step()
                except Exception as exc:  # a broken engine must not leave callers waiting for ever
                    logger.exception("engine step failed")
                    self._fail_all(exc)
                    continue
                self.steps += 1
                delivered = [(self._handles.get(out.request_id), out) for out in outputs]
                for out in outputs:
                    if out.finished:
                        self._handles.pop(out.request_id, None)
                        self._deadlines.pop(out.request_id, None)
            for handle, out in delivered:
                if handle is not None:
                    handle.outputs.put(out)

    def _expire(self) -> None:
        now = time.perf_counter()
        for request_id in [r for r, deadline in self._deadlines.items() if deadline <= now]:
            handle = self._handles.pop(request_id)
            del self._deadlines[request_id]
            handle.outputs.put(self.engine.abort(request_id, TIME_LIMIT) or _ended(request_id, TIME_LIMIT))

    def _fail_all(self, exc: Exception) -> None:
        for request_id, handle in list(self._handles.items()):
            out = self.engine.abort(request_id, "error") or _ended(request_id, "error")
            out.error = f"engine: {exc}"
            handle.outputs.put(out)
        self._handles.clear()
        self._deadlines.clear()

    def stop(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Take no new requests; with `drain`, wait for those in flight, else cancel them."""
        with self._lock:
            self._stopping = True
            if not drain:
                for request_id in list(self._handles):
                    handle = self._handles.pop(request_id)
                    handle.outputs.put(self.engine.abort(request_id, CANCELLED) or _ended(request_id, CANCELLED))
                self._deadlines.clear()
            self._lock.notify_all()
        self._thread.join(timeout_s)


def _ended(request_id: str, reason: str) -> RequestOutput:
    """The last output of a request the engine no longer knows (it finished in the same step)."""
    return RequestOutput(request_id=request_id, prompt_token_ids=[], text="", token_ids=[], finished=True,
                         finish_reason=reason, stats=RequestStats())
