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

from mirrorspec.orchestration.engine import Engine
from mirrorspec.orchestration.outputs import RequestOutput
from mirrorspec.orchestration.prompts import Prompt
from mirrorspec.orchestration.stats import RequestStats
from mirrorspec.params import SamplingParams, SpecParams

logger = logging.getLogger(__name__)

CANCELLED = "cancelled"
TIME_LIMIT = "time_limit"


class QueueFull(Exception):
    """The engine has as many requests in flight as it may hold."""


class Stopping(Exception):
    """The loop is shutting down and takes no new requests."""


class ScaleBusy(Exception):
    """Another Scale call is still starting or retiring replicas."""


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
    """Only the loop thread touches the engine: callers send commands (add, cancel, stop) that it applies between
    steps, in arrival order, so a caller waits at most one step and is never starved by the loop."""

    def __init__(self, engine: Engine, *, max_in_flight: int, name: str = "engine-loop") -> None:
        self.engine = engine
        self.max_in_flight = max_in_flight
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._handles: dict[str, Handle] = {}
        self._deadlines: dict[str, float] = {}
        self._stopping = False
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------- requests
    def submit(self, prompt: Prompt, sampling: SamplingParams, spec: SpecParams, *, chat: bool | None = None,
               time_limit_s: float | None = None) -> Handle:
        """Queue a request (InvalidRequestError for bad input, QueueFull past the bound, Stopping when draining)."""
        if self._stopping:
            raise Stopping("the server is shutting down")
        reply: queue.SimpleQueue = queue.SimpleQueue()
        self._send(("add", (prompt, sampling, spec, chat, time_limit_s), reply))
        result = reply.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def cancel(self, request_id: str, reason: str = CANCELLED) -> None:
        """Abort a request at the next step boundary; its handle gets a last output with `reason`."""
        self._send(("cancel", request_id, reason))

    def _send(self, command: tuple) -> None:
        self._commands.put(command)
        self._wake.set()

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
            self._apply_commands()
            if not self.engine.has_unfinished():
                if self._stopping:
                    return
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._expire()
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a broken engine must not leave callers waiting for ever
                logger.exception("engine step failed")
                self._fail_all(exc)
                continue
            self.steps += 1
            for out in outputs:
                handle = self._handles.get(out.request_id)
                if out.finished:
                    self._handles.pop(out.request_id, None)
                    self._deadlines.pop(out.request_id, None)
                if handle is not None:
                    handle.outputs.put(out)

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                command[2].put(self._add(*command[1]))
            elif command[0] == "cancel":
                self._end(command[1], command[2])
            elif command == ("stop", False):  # without draining; stop() has set _stopping already
                for request_id in list(self._handles):
                    self._end(request_id, CANCELLED)

    def _add(self, prompt, sampling, spec, chat, time_limit_s) -> Handle | BaseException:
        if self._stopping:
            return Stopping("the server is shutting down")
        if len(self._handles) >= self.max_in_flight:
            return QueueFull(f"{len(self._handles)} requests in flight, the most this replica holds")
        try:
            request_id = self.engine.add_request(prompt, sampling, spec, chat=chat)
        except Exception as exc:  # bad input goes back to the caller, as raised
            return exc
        handle = Handle(request_id, self)
        self._handles[request_id] = handle
        if time_limit_s:
            self._deadlines[request_id] = handle.arrival + time_limit_s
        return handle

    def _end(self, request_id: str, reason: str, error: str | None = None) -> None:
        handle = self._handles.pop(request_id, None)
        self._deadlines.pop(request_id, None)
        if handle is None:  # finished already
            return
        out = self.engine.abort(request_id, reason) or _ended(request_id, reason)
        out.error = error
        handle.outputs.put(out)

    def _expire(self) -> None:
        now = time.perf_counter()
        for request_id in [r for r, deadline in self._deadlines.items() if deadline <= now]:
            self._end(request_id, TIME_LIMIT)

    def _fail_all(self, exc: Exception) -> None:
        for request_id in list(self._handles):
            self._end(request_id, "error", error=f"engine: {exc}")

    def stop(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Take no new requests; with `drain`, finish those in flight, else cancel them. Returns when done."""
        self._stopping = True  # new submits are refused from now on
        self._send(("stop", drain))
        self._thread.join(timeout_s)


def _ended(request_id: str, reason: str) -> RequestOutput:
    """The last output of a request the engine no longer knows (it finished in the same step)."""
    return RequestOutput(request_id=request_id, prompt_token_ids=[], text="", token_ids=[], finished=True,
                         finish_reason=reason, stats=RequestStats())
