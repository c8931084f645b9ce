"""Property-based fuzzing (hypothesis, bounded for CI) of the speculation channel's drafter end on a real server:
any stream of target messages, well formed or not, any bytes on the wire, ends OK or INVALID_ARGUMENT (never
INTERNAL, never a hang); every reply answers one message (drafts for a Propose, or an error naming a field), and a
fresh stream afterwards gets the same drafts as a drafter that was never fuzzed."""

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import tiny_model, worker
from mirrorspec.orchestration.drafter_session import DrafterSession
from mirrorspec.protos import speculation_pb2 as pb
from mirrorspec.protos import speculation_pb2_grpc as pb_grpc
from mirrorspec.protos.gate import bearer
from mirrorspec.speculation import wire
from mirrorspec.speculation.drafter_server import serve

VOCAB = 96
SECRET = "fuzz-secret"
MAX_NODES = 64
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
CASES = settings(max_examples=120, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
small_id = st.integers(0, 4)


def mostly(sensible, anything):
    """Three times in four a sensible value (so that most messages are handled), else anything the wire carries."""
    return st.sampled_from([False, False, False, True]).flatmap(lambda wild: anything if wild else sensible)


token = mostly(st.integers(0, VOCAB - 1), st.integers(-2**31, 2**31 - 1))
shape = mostly(st.integers(0, 6), u32)
floats = st.floats(allow_nan=True, allow_infinity=True)

sampling = st.builds(pb.Sampling, temperature=mostly(st.sampled_from([0.0, 0.7, 1.0]), floats),
                     top_k=mostly(st.integers(0, 8), u32),
                     top_p=mostly(st.sampled_from([1.0, 0.9]), floats))
open_body = st.builds(pb.Open, sequences=st.lists(st.builds(pb.OpenSequence, id=mostly(small_id, u64), seed=u64,
                                                            sampling=sampling), max_size=3))
release_body = st.builds(pb.Release, ids=st.lists(mostly(small_id, u64), max_size=3))
draft_shape = mostly(st.tuples(st.integers(1, 4), st.integers(1, 3)).flatmap(
    lambda dk: st.tuples(st.just(dk[0]), st.just(dk[1]), st.integers(dk[0], 12))), st.tuples(shape, shape, shape))


@st.composite
def verdict(draw) -> pb.Verdict:
    depth, topk, budget = draw(draft_shape)
    return pb.Verdict(id=draw(mostly(small_id, u64)),
                      committed=draw(mostly(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12),
                                            st.lists(token))),
                      accepted_nodes=draw(mostly(st.lists(st.integers(0, 6), max_size=4),
                                                 st.lists(st.integers(-2**31, 2**31 - 1), max_size=4))),
                      features=draw(mostly(st.none(), st.builds(pb.Features, width=u32, data=st.binary(max_size=64)))),
                      depth=depth, topk=topk, budget=budget, branches=draw(st.booleans()))


propose_body = st.builds(pb.Propose, verdicts=st.lists(verdict(), min_size=1, max_size=2))
exit_body = st.builds(pb.EarlyExit, layer=u32, sequences=st.lists(st.builds(
    pb.ExitCandidates, id=mostly(small_id, u64), positions=shape, kappa=shape, ids=st.lists(token, max_size=8),
    logprobs=st.lists(st.floats(width=32), max_size=8)), max_size=2))
proposals = st.tuples(st.just("propose"), propose_body)
bodies = st.one_of(st.none(), st.tuples(st.just("open"), open_body), st.tuples(st.just("release"), release_body),
                   proposals, proposals, proposals, st.tuples(st.just("early_exit"), exit_body))


@st.composite
def streams(draw) -> list[pb.TargetMessage]:
    """A stream that mostly opens sequences first and numbers its messages in order (so that proposals are
    drafted), with any body and, now and then, any seq number."""
    drawn = draw(st.lists(bodies, min_size=1, max_size=8))
    if draw(st.sampled_from([True] * 7 + [False])):
        drawn.insert(0, ("open", pb.Open(sequences=[pb.OpenSequence(id=i, seed=i, sampling=pb.Sampling(
            temperature=i % 2 * 0.7, top_k=i, top_p=1)) for i in range(5)])))
    messages, expected = [], 1
    for body in drawn:
        msg = pb.TargetMessage(seq=draw(u64) if draw(st.sampled_from([False] * 7 + [True])) else expected)
        expected += msg.seq == expected
        if body is not None:
            getattr(msg, body[0]).CopyFrom(body[1])
        messages.append(msg)
    return messages


@pytest.fixture(scope="module")
def drafter():
    return tiny_model("llama", VOCAB, seed=2, sharpness=4.0)


@pytest.fixture(scope="module")
def server(drafter):
    session = DrafterSession(worker(drafter, 8, 193, 64), max_spec_nodes=MAX_NODES)
    server, address = serve(session, vocab_size=VOCAB, feature_size=0, secret=SECRET)
    yield address
    server.stop(0)


def replies_of(address: str, messages) -> tuple[grpc.StatusCode, list[pb.DrafterMessage]]:
    replies = []
    with grpc.insecure_channel(address) as channel:
        try:
            for reply in pb_grpc.SpeculationStub(channel).Speculate(iter(messages), timeout=30,
                                                                     metadata=bearer(SECRET)):
                replies.append(reply)
        except grpc.RpcError as exc:
            return exc.code(), replies
    return grpc.StatusCode.OK, replies


@CASES
@given(messages=streams())
def test_any_stream_is_answered_message_by_message(server, messages):
    status, replies = replies_of(server, messages)
    assert status in ALLOWED
    sent = {m.seq for m in messages}
    for reply in replies:
        assert reply.seq in sent
        kind = reply.WhichOneof("body")
        assert kind in ("drafts", "error")
        if kind == "error":
            assert reply.error.field and reply.error.field != "drafter", reply.error  # named, and no drafter bug
        else:
            assert all(len(tree.ids) <= MAX_NODES for tree in reply.drafts.trees)


@CASES
@given(bodies=st.lists(st.binary(max_size=120), min_size=1, max_size=4))
def test_any_bytes_on_the_stream_are_answered_or_refused(server, bodies):
    with grpc.insecure_channel(server) as channel:
        raw = channel.stream_stream("/mirrorspec.speculation.v1.Speculation/Speculate",
                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            list(raw(iter(bodies), timeout=30, metadata=bearer(SECRET)))
            status = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            status = exc.code()
    assert status in ALLOWED


def test_a_fresh_stream_after_the_fuzzing_drafts_as_a_new_drafter_would(server, drafter):
    greedy = pb.Sampling(temperature=0, top_p=1)
    messages = [pb.TargetMessage(seq=1, open=pb.Open(sequences=[pb.OpenSequence(id=3, sampling=greedy)])),
                pb.TargetMessage(seq=2, propose=pb.Propose(verdicts=[pb.Verdict(id=3, committed=[5, 17, 42, 8],
                                                                                 depth=4, topk=2, budget=8)]))]
    status, replies = replies_of(server, messages)
    fresh = serve(DrafterSession(worker(drafter, 8, 193, 64), max_spec_nodes=MAX_NODES), vocab_size=VOCAB,
                  feature_size=0, secret=SECRET)
    try:
        _, expected = replies_of(fresh[1], messages)
    finally:
        fresh[0].stop(0)
    assert status == grpc.StatusCode.OK and [r.WhichOneof("body") for r in replies] == ["drafts"]
    assert wire.decode_drafts(replies[0].drafts, VOCAB)[3].tree.tokens == \
        wire.decode_drafts(expected[0].drafts, VOCAB)[3].tree.tokens
    assert len(replies[0].drafts.trees[0].ids) == 8
