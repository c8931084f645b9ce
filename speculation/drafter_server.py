"""The drafter's gRPC server: the speculation channel's drafter end, next to the drafter model.

One local draft service (a DrafterSession, or a block-diffusion drafter's) serves one target stream at a time; a
new stream replaces the old one (the target reconnects after a failure and reopens its sequences). Messages must
arrive with consecutive `seq` numbers: a repeated (stale) or skipped (out-of-order) one is refused with an Error
naming `seq`, and nothing is applied.
Every Propose is answered at once; the answer's window is then prepared for the next early exit while the target
runs its lower layers, so that work stays off the target's critical path.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.interfaces import LocalDraftService
from mirrorspec.protos import speculation_pb2 as pb
from mirrorspec.protos import speculation_pb2_grpc as pb_grpc
from mirrorspec.protos.gate import Gate
from mirrorspec.speculation import wire

logger = logging.getLogger(__name__)


class DrafterService(pb_grpc.SpeculationServicer):
    def __init__(self, session: LocalDraftService, *, vocab_size: int, feature_size: int) -> None:
        self.session = session
        self.vocab_size = vocab_size
        self.feature_size = feature_size
        self._lock = threading.Lock()  # the session is used by one message at a time
        self._generation = 0

    def Describe(self, request: pb.DescribeRequest, context) -> pb.DrafterInfo:
        return pb.DrafterInfo(uses_features=self.session.uses_features, feature_size=self.feature_size,
                              vocabulary=self.session.vocabulary or [], vocab_size=self.vocab_size,
                              drafts_by_diffusion=self.session.drafts_by_diffusion,
                              feature_layers=self.session.feature_layers if self.session.uses_features else [])

    def Ping(self, request: pb.PingMessage, context) -> pb.PingMessage:
        return pb.PingMessage()

    def Speculate(self, request_iterator, context):
        with self._lock:
            self._generation += 1
            generation = self._generation
            self.session.reset()  # a new stream: the previous target's sequences are gone
        expected = 1
        for msg in request_iterator:
            with self._lock:
                if generation != self._generation:
                    return  # a newer stream took over
                if msg.seq != expected:
                    kind = "stale (already handled)" if msg.seq < expected else "out of order (messages missing)"
                    yield pb.DrafterMessage(seq=msg.seq, error=pb.Error(
                        field="seq", message=f"message {msg.seq} is {kind}; expected {expected}"))
                    continue
                expected += 1
                reply = self._handle(msg)
            if reply is not None:
                yield reply
            with self._lock:
                if generation == self._generation:
                    self.session.prepare_pending()

    def _handle(self, msg: pb.TargetMessage) -> pb.DrafterMessage | None:
        kind = msg.WhichOneof("body")
        try:
            if kind == "open":
                self.session.open(wire.decode_open(msg.open))
            elif kind == "release":
                self.session.release(list(msg.release.ids))
            elif kind == "early_exit":
                self.session.early_exit(wire.decode_early_exit(msg.early_exit, self.vocab_size))
            elif kind == "propose":
                reports = wire.decode_propose(msg.propose, self.vocab_size, self.feature_size)
                drafts = wire.encode_drafts(self.session.propose(reports))
                busy_ms, propose_ms = self.session.busy_s * 1000, self.session.propose_s * 1000
                self.session.busy_s = self.session.propose_s = 0.0
                return pb.DrafterMessage(seq=msg.seq, drafts=drafts, busy_ms=busy_ms, propose_ms=propose_ms)
            else:
                raise InvalidRequestError("body", "the message carries no body")
        except InvalidRequestError as exc:
            return pb.DrafterMessage(seq=msg.seq, error=pb.Error(field=exc.field, message=exc.reason))
        except Exception as exc:  # a drafter bug must reach the target as an error, not as a silent stall
            logger.exception("drafter failed on message %d", msg.seq)
            return pb.DrafterMessage(seq=msg.seq, error=pb.Error(field="drafter", message=repr(exc)))
        return None


def serve(session: LocalDraftService, *, vocab_size: int, feature_size: int, secret: str, host: str = "127.0.0.1",
          port: int = 0) -> tuple[grpc.Server, str]:
    """Start the speculation server on host:port (0: any free port); return it and its address. Every call must
    carry the channel's shared `secret` (UNAUTHENTICATED otherwise)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[Gate(secret)],
                         options=wire.CHANNEL_OPTIONS)
    pb_grpc.add_SpeculationServicer_to_server(
        DrafterService(session, vocab_size=vocab_size, feature_size=feature_size), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return server, f"{host}:{bound}"
