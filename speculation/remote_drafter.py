"""The target's end of the speculation channel: a `DraftService` whose drafter sits behind gRPC.

One bidirectional stream carries every message; open, release and early-exit messages are sent without waiting,
and only `propose` waits for its answer (with a timeout, so that a hung drafter never hangs the target). Answers
are matched by `seq`: one that belongs to an earlier, abandoned request is dropped; an Error from the drafter
raises `DrafterError` naming the field it refused. After any failure the scheduler calls `reset`, which closes
the stream; the next call opens a new one, and the drafter then forgets the old sequences.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import grpc

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.interfaces import ExitCandidates, OpenSpec, Proposal, Report
from mirrorspec.protos import speculation_pb2 as pb
from mirrorspec.protos import speculation_pb2_grpc as pb_grpc
from mirrorspec.protos.gate import bearer
from mirrorspec.speculation import wire

logger = logging.getLogger(__name__)


class DrafterError(RuntimeError):
    """The drafter refused a message (or failed on it); `field` names what it refused."""

    def __init__(self, seq: int, field: str, message: str) -> None:
        super().__init__(f"drafter refused message {seq}: {field}: {message}")
        self.field = field


class _Stream:
    """One open Speculate call: an outbox the gRPC runtime drains and an inbox a reader thread fills."""

    def __init__(self, stub: pb_grpc.SpeculationStub, metadata) -> None:
        self.outbox: queue.Queue = queue.Queue()
        self.inbox: queue.Queue = queue.Queue()
        self.call = stub.Speculate(iter(self.outbox.get, None), metadata=metadata)
        self.next_seq = 1
        threading.Thread(target=self._read, daemon=True, name="speculation-reader").start()

    def _read(self) -> None:
        try:
            for msg in self.call:
                self.inbox.put(msg)
            self.inbox.put(ConnectionError("the drafter closed the speculation stream"))
        except grpc.RpcError as exc:
            self.inbox.put(exc)

    def send(self, **body) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.outbox.put(pb.TargetMessage(seq=seq, **body))
        return seq

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()


class RemoteDrafter:
    """A DraftService over gRPC (the drafter side runs speculation/drafter_server.py)."""

    def __init__(self, address: str, *, vocab_size: int, secret: str, connect_timeout_s: float = 30.0,
                 reply_timeout_s: float = 10.0) -> None:
        self.address = address
        self._metadata = bearer(secret)  # the channel's shared secret, on every call
        self.reply_timeout_s = reply_timeout_s
        self._channel = grpc.insecure_channel(address, options=wire.CHANNEL_OPTIONS)
        self._stub = pb_grpc.SpeculationStub(self._channel)
        try:
            info = self._stub.Describe(pb.DescribeRequest(), timeout=connect_timeout_s, wait_for_ready=True,
                                       metadata=self._metadata)
        except grpc.RpcError as exc:
            self._channel.close()
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise InvalidRequestError("speculation_secret", f"the drafter at {address} refused this target's "
                                                                f"secret") from None
            raise InvalidRequestError("drafter", f"no drafter answered at {address} within {connect_timeout_s:g} s "
                                                 f"({exc.code().name}); is `mirrorspec serve-drafter` running "
                                                 f"there?") from None
        if info.vocab_size != vocab_size:
            raise InvalidRequestError("drafter", f"the drafter at {address} works in a {info.vocab_size}-token "
                                                 f"vocabulary; the target has {vocab_size}")
        self.vocab_size = vocab_size
        self.uses_features = info.uses_features
        self.drafts_by_diffusion = info.drafts_by_diffusion
        self.feature_size = info.feature_size
        self.feature_layers = tuple(info.feature_layers)
        self.vocabulary = list(info.vocabulary) or None
        self._stream: _Stream | None = None
        # Channel accounting for the bench: drafter compute reported by the drafter, and the target's waits.
        self.drafter_busy_s = 0.0
        self.drafter_propose_s = 0.0
        self.wait_s = 0.0
        self.proposes = 0
        self.late = 0  # proposes not awaited past the patience the target gave (or not sent: one outstanding)
        self._awaiting: int | None = None  # a Propose whose answer was not waited for
        self._awaiting_since = 0.0

    def _open_stream(self) -> _Stream:
        if self._stream is None:
            self._stream = _Stream(self._stub, self._metadata)
        return self._stream

    # ------------------------------------------------------------------------------ DraftService
    def open(self, specs: list[OpenSpec]) -> None:
        self._open_stream().send(open=wire.encode_open(specs))

    def release(self, seq_ids: list[int]) -> None:
        if self._stream is not None:  # a fresh stream knows no sequences anyway
            self._stream.send(release=pb.Release(ids=seq_ids))

    def early_exit(self, candidates: list[ExitCandidates]) -> None:
        self._open_stream().send(early_exit=wire.encode_early_exit(candidates))

    def prepare_pending(self) -> None:
        """Nothing to do here: the drafter's server prepares after each answer, on its own side."""

    def propose(self, reports: list[Report], patience_s: float | None = None) -> dict[int, Proposal] | None:
        """The next drafts; {} when the drafter did not answer within `patience_s` (it will, and that answer is
        dropped); None when the previous answer is still outstanding, so nothing was sent: the reports stay the
        caller's to send next time (a slow drafter is asked at its own pace, and no backlog builds up)."""
        stream = self._open_stream()
        started = time.perf_counter()
        if self._awaiting is not None:
            if self._next_answer(stream, self._awaiting, self._awaiting_since + self.reply_timeout_s, 0.0) is None:
                self.late += 1
                return None
            self._awaiting = None
        seq = stream.send(propose=wire.encode_propose(reports))
        patient = self.reply_timeout_s if patience_s is None else min(patience_s, self.reply_timeout_s)
        msg = self._next_answer(stream, seq, started + self.reply_timeout_s, patient)
        self.wait_s += time.perf_counter() - started
        if msg is None:
            self._awaiting, self._awaiting_since = seq, started
            self.late += 1
            return {}
        self.drafter_busy_s += msg.busy_ms / 1000
        self.drafter_propose_s += msg.propose_ms / 1000
        self.proposes += 1
        return wire.decode_drafts(msg.drafts, self.vocab_size)

    def _next_answer(self, stream: _Stream, seq: int, dead_at: float, patience_s: float):
        """The answer to message `seq`, or None if it has not come within `patience_s`. Raises if the drafter
        refused something, the stream broke, or nothing came by `dead_at` (a drafter that stopped answering)."""
        give_up = min(dead_at, time.perf_counter() + patience_s)
        while True:
            try:
                msg = stream.inbox.get(timeout=max(0.0, give_up - time.perf_counter()))
            except queue.Empty:
                if time.perf_counter() >= dead_at:
                    raise TimeoutError(f"the drafter at {self.address} did not answer within "
                                       f"{self.reply_timeout_s} s") from None
                return None
            if isinstance(msg, BaseException):
                raise ConnectionError(f"the speculation stream to {self.address} broke: {msg}") from msg
            if msg.WhichOneof("body") == "error":
                raise DrafterError(msg.seq, msg.error.field, msg.error.message)
            if msg.seq < seq:
                logger.debug("dropping the drafter's late answer to message %d", msg.seq)
                continue
            if msg.seq > seq:
                raise DrafterError(msg.seq, "seq", f"answer to message {msg.seq} while waiting for {seq}")
            return msg

    def round_trip_s(self, samples: int = 50) -> float:
        """Median time of an empty unary call to the drafter: the channel's own latency."""
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            self._stub.Ping(pb.PingMessage(), timeout=self.reply_timeout_s, metadata=self._metadata)
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    def read_accounting(self) -> dict:
        """Drafts received, the target's waits and the drafter's compute since the last read (then zero)."""
        out = {"proposes": self.proposes, "late": self.late, "wait_s": self.wait_s,
               "drafter_busy_s": self.drafter_busy_s, "drafter_propose_s": self.drafter_propose_s}
        self.proposes, self.late, self.wait_s, self.drafter_busy_s, self.drafter_propose_s = 0, 0, 0.0, 0.0, 0.0
        return out

    def reset(self) -> None:
        self._awaiting = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        self.reset()
        self._channel.close()
