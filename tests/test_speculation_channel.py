"""The speculation channel: every message round-trips; malformed, stale and out-of-order messages are refused
with an error naming the field; an engine whose drafter sits behind a real gRPC server on 127.0.0.1 stays
lossless, and keeps going when the server dies."""

import random
import time

import grpc
import pytest
import torch

from helpers import noisy_copy, tiny_engine, tiny_model, worker
from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.draft_tree import DraftTree
from mirrorspec.orchestration.drafter_session import DrafterSession
from mirrorspec.orchestration.engine import Engine
from mirrorspec.orchestration.interfaces import ExitCandidates, OpenSpec, Proposal, Report
from mirrorspec.params import SamplingParams, SpecParams
from mirrorspec.protos import speculation_pb2 as pb
from mirrorspec.protos import speculation_pb2_grpc as pb_grpc
from mirrorspec.protos.gate import bearer
from mirrorspec.speculation import wire
from mirrorspec.speculation.drafter_server import serve
from mirrorspec.speculation.remote_drafter import RemoteDrafter

VOCAB = 96
SECRET = "channel-secret"


def through_bytes(msg):
    return type(msg).FromString(msg.SerializeToString())


def test_every_message_round_trips():
    specs = [OpenSpec(3, 12345, SamplingParams(temperature=0.7, top_k=5, top_p=0.9)), OpenSpec(4, 1, SamplingParams())]
    assert wire.decode_open(through_bytes(wire.encode_open(specs))) == specs

    feats = torch.randn(3, 8)
    reports = [Report(3, [5, 6, 7], [0, 1], feats, depth=4, topk=2, budget=6, branches=True),
               Report(4, [9], [], None, depth=2, topk=1, budget=2, min_path=0.125)]
    back = wire.decode_propose(through_bytes(wire.encode_propose(reports)), VOCAB, feature_size=8)
    assert torch.equal(back[0].features, feats) and back[1].features is None
    assert [_fields(r) for r in back] == [_fields(r) for r in reports]

    cands = [ExitCandidates(3, torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.log(torch.tensor([[.5, .25]] * 3)))]
    (c,) = wire.decode_early_exit(through_bytes(pb.EarlyExit(sequences=wire.encode_early_exit(cands).sequences)),
                                  VOCAB)
    assert torch.equal(c.ids, cands[0].ids) and torch.allclose(c.logprobs, cands[0].logprobs)

    q = torch.zeros(VOCAB)
    q[[4, 9, 20]] = torch.tensor([0.5, 0.3, 0.2])
    sampled = DraftTree(tokens=[4, 9], parents=[-1, 0], proposals=[q, q], logprobs=[-0.7, -1.2])
    greedy = DraftTree(tokens=[1, 2, 3], parents=[-1, -1, 0], proposals=[None] * 3, logprobs=[-0.1, -2.0, -0.3])
    out = wire.decode_drafts(through_bytes(wire.encode_drafts({3: Proposal(sampled, reused=True),
                                                               4: Proposal(greedy)})), VOCAB)
    assert out[3].reused and not out[4].reused
    assert out[3].tree.tokens == [4, 9] and torch.equal(out[3].tree.proposals[1], q)
    assert out[4].tree.parents == [-1, -1, 0] and out[4].tree.proposals == [None] * 3
    assert out[4].tree.logprobs == pytest.approx(greedy.logprobs)


def _fields(r: Report) -> tuple:
    return r.seq_id, r.committed, r.accepted_nodes, r.depth, r.topk, r.budget, r.branches, r.min_path


def _verdict(**kw):
    base = dict(id=1, committed=[3], depth=2, topk=1, budget=2)
    return pb.Propose(verdicts=[pb.Verdict(**{**base, **kw})])


MALFORMED = [
    (lambda: wire.decode_propose(_verdict(committed=[]), VOCAB, 0), "propose.verdicts[0].committed"),
    (lambda: wire.decode_propose(_verdict(committed=[VOCAB]), VOCAB, 0), "propose.verdicts[0].committed"),
    (lambda: wire.decode_propose(_verdict(budget=1), VOCAB, 0), "propose.verdicts[0].topk"),
    (lambda: wire.decode_propose(_verdict(min_path=float("nan")), VOCAB, 0), "propose.verdicts[0].min_path"),
    (lambda: wire.decode_propose(_verdict(min_path=1.5), VOCAB, 0), "propose.verdicts[0].min_path"),
    (lambda: wire.decode_propose(_verdict(features=pb.Features(width=4, data=b"\0" * 16)), VOCAB, 8),
     "propose.verdicts[0].features.width"),
    (lambda: wire.decode_propose(_verdict(features=pb.Features(width=8, data=b"\0" * 20)), VOCAB, 8),
     "propose.verdicts[0].features.data"),
    (lambda: wire.decode_propose(pb.Propose(verdicts=[_verdict().verdicts[0]] * 2), VOCAB, 0), "propose.verdicts"),
    (lambda: wire.decode_early_exit(pb.EarlyExit(sequences=[pb.ExitCandidates(
        id=1, positions=2, kappa=2, ids=[1, 2, 3], logprobs=[-1.0] * 3)]), VOCAB), "early_exit.sequences[0]"),
    (lambda: wire.decode_early_exit(pb.EarlyExit(sequences=[pb.ExitCandidates(
        id=1, positions=1, kappa=1, ids=[1], logprobs=[float("nan")])]), VOCAB), "early_exit.sequences[0].logprobs"),
    (lambda: wire.decode_drafts(pb.Drafts(trees=[pb.Tree(id=1, ids=[1, 2], parents=[-1, 1], logprobs=[0, 0])]),
                                VOCAB), "drafts.trees[0].parents"),
    (lambda: wire.decode_drafts(pb.Drafts(trees=[pb.Tree(id=1, ids=[1], parents=[-1], logprobs=[0], proposals=[
        pb.Proposal(ids=[1], probs=[0.5])])]), VOCAB), "drafts.trees[0].proposals[0].probs"),
    (lambda: wire.decode_open(pb.Open(sequences=[pb.OpenSequence(id=1, sampling=pb.Sampling(temperature=-1, top_p=1))])),
     "open.sequences[0].sampling.temperature"),
]


@pytest.mark.parametrize("decode, field", MALFORMED, ids=[f for _, f in MALFORMED])
def test_malformed_messages_name_the_field(decode, field):
    with pytest.raises(InvalidRequestError) as info:
        decode()
    assert info.value.field == field


@pytest.fixture(scope="module")
def models():
    return tiny_model("llama", VOCAB, seed=1, sharpness=4.0), tiny_model("llama", VOCAB, seed=2, sharpness=4.0)


@pytest.fixture
def served(models):
    session = DrafterSession(worker(models[1], 8, 193, 64), max_spec_nodes=64)
    server, address = serve(session, vocab_size=VOCAB, feature_size=0, secret=SECRET)
    yield server, address
    server.stop(0)


def test_stale_out_of_order_and_bad_messages_are_refused_without_a_hang(served):
    _, address = served
    stub = pb_grpc.SpeculationStub(grpc.insecure_channel(address))
    greedy = pb.Sampling(temperature=0, top_p=1)
    messages = [
        pb.TargetMessage(seq=1, open=pb.Open(sequences=[pb.OpenSequence(id=7, sampling=greedy)])),
        pb.TargetMessage(seq=1, release=pb.Release(ids=[7])),  # stale: 1 again
        pb.TargetMessage(seq=5, release=pb.Release(ids=[7])),  # out of order: 2 expected
        pb.TargetMessage(seq=2),  # no body
        pb.TargetMessage(seq=3, propose=_verdict(id=99)),  # a sequence that was never opened
        pb.TargetMessage(seq=4, propose=_verdict(id=7, committed=[1, 2, 3])),  # valid: drafts come back
    ]
    replies = list(stub.Speculate(iter(messages), timeout=30, metadata=bearer(SECRET)))
    errors = [(r.seq, r.error.field) for r in replies if r.WhichOneof("body") == "error"]
    assert errors == [(1, "seq"), (5, "seq"), (2, "body"), (3, "propose.id")]
    assert "stale" in replies[0].error.message and "out of order" in replies[1].error.message
    drafts = [r for r in replies if r.WhichOneof("body") == "drafts"]
    assert [r.seq for r in drafts] == [4] and len(drafts[0].drafts.trees[0].ids) == 2


def prompts(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 30))] for _ in range(n)]


@pytest.mark.parametrize("spec", [SpecParams("chain", gamma=3), SpecParams("tree", tree_depth=3, tree_topk=2,
                                                                           tree_nodes=6), SpecParams("mirror", gamma=3)],
                         ids=lambda s: s.method)
def test_engine_over_grpc_is_lossless(models, served, spec):
    target, _ = models
    ps = prompts(6)
    sampling = SamplingParams(max_new_tokens=16, ignore_eos=True)
    ar = [o.token_ids for o in tiny_engine(target, None).generate(ps, sampling)]
    remote = RemoteDrafter(served[1], vocab_size=VOCAB, secret=SECRET)
    outs = Engine(worker(target, 4, 193, 64), remote, max_batch=4, max_model_len=128).generate(ps, sampling, spec)
    assert [o.token_ids for o in outs] == ar
    assert remote.proposes > 0 and sum(o.stats.drafts for o in outs) > 0
    if spec.method == "mirror":
        assert sum(o.stats.reused_windows for o in outs) > 0


def test_a_dead_drafter_server_costs_speed_not_tokens(models, served):
    target, _ = models
    server, address = served
    ps = prompts(4, seed=3)
    sampling = SamplingParams(max_new_tokens=24, ignore_eos=True)
    ar = [o.token_ids for o in tiny_engine(target, None).generate(ps, sampling)]
    remote = RemoteDrafter(address, vocab_size=VOCAB, secret=SECRET, reply_timeout_s=5)
    engine = Engine(worker(target, 4, 193, 64), remote, max_batch=4, max_model_len=128)
    ids = [engine.add_request(p, sampling, SpecParams("mirror", gamma=3)) for p in ps]
    outs = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                outs[out.request_id] = out
        if remote.proposes == 3:
            server.stop(0)  # the drafter dies mid-generation
    assert [outs[i].token_ids for i in ids] == ar
    assert all(o.stats.fallback_steps > 0 for o in outs.values())
    assert all(o.stats.drafts > 0 for o in outs.values())  # drafted before the drafter died


def test_a_drafter_that_dies_mid_stream_and_comes_back_is_rejoined(models):
    """Sampling, streaming: the drafter's server stops mid-stream, the target decodes alone (no token lost or
    repeated: the chunks are the answer), then a drafter serves again at the same address and the target, after
    its back-off, reopens its sequence there and drafts again."""
    target, drafter = models

    def start(port: int = 0):
        return serve(DrafterSession(worker(noisy_copy(target, 0.4, seed=2), 8, 400, 64), max_spec_nodes=64),
                     vocab_size=VOCAB, feature_size=0, secret=SECRET, port=port)

    server, address = start()
    remote = RemoteDrafter(address, vocab_size=VOCAB, secret=SECRET, reply_timeout_s=5)
    engine = Engine(worker(target, 4, 400, 64), remote, max_batch=4, max_model_len=300)
    sampling = SamplingParams(max_new_tokens=200, temperature=0.8, seed=9, ignore_eos=True)
    chunks, phase, back_at = [], "up", None
    try:
        for out in engine.stream(prompts(1, seed=6)[0], sampling, SpecParams("chain", gamma=3)):
            chunks.append(out)
            if phase == "up" and remote.proposes >= 3:
                server.stop(0)  # the drafter dies mid-stream
                phase = "down"
            elif phase == "down" and out.stats.fallback_steps > 0:
                server, _ = start(int(address.rsplit(":", 1)[1]))  # and comes back where it was
                phase, back_at = "back", remote.proposes
    finally:
        server.stop(0)
        remote.close()
    final = chunks[-1]
    assert phase == "back" and final.finished
    assert [t for c in chunks for t in c.new_token_ids] == final.token_ids and len(final.token_ids) == 200
    assert final.stats.fallback_steps > 0
    assert remote.proposes > back_at + 3 and engine.scheduler.drafter_failures == 0  # rejoined, drafting again


class SlowSession(DrafterSession):
    """A drafter that becomes much slower than the target after its first answers (a throttled device)."""

    def __init__(self, *args, fast_answers: int, delay_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast_answers, self.delay_s, self.answers = fast_answers, delay_s, 0

    def propose(self, reports, patience_s=None):
        self.answers += 1
        if self.answers > self.fast_answers:
            time.sleep(self.delay_s)  # simulated slowness of the drafter's device, not a wait for an event
        return super().propose(reports, patience_s)


def test_a_slow_drafter_is_not_waited_for_and_no_backlog_builds(models):
    target, drafter = models
    session = SlowSession(worker(drafter, 8, 193, 64), max_spec_nodes=64, fast_answers=3, delay_s=0.3)
    server, address = serve(session, vocab_size=VOCAB, feature_size=0, secret=SECRET)
    try:
        ps = prompts(3, seed=5)
        sampling = SamplingParams(max_new_tokens=30, ignore_eos=True)
        ar = [o.token_ids for o in tiny_engine(target, None).generate(ps, sampling)]
        remote = RemoteDrafter(address, vocab_size=VOCAB, secret=SECRET)
        outs = Engine(worker(target, 4, 193, 64), remote, max_batch=4, max_model_len=128).generate(
            ps, sampling, SpecParams("chain", gamma=3))
        assert [o.token_ids for o in outs] == ar
        assert all(o.stats.late_drafts > 0 and o.stats.fallback_steps == 0 for o in outs)  # slow, not dead
        assert all(o.stats.drafts > 0 for o in outs)
        # Asked at its own pace: far fewer questions than target steps, so no backlog of stale work.
        steps = max(o.stats.target_forwards for o in outs)
        assert session.answers < steps / 2
    finally:
        server.stop(0)


def test_dialing_an_address_where_no_drafter_serves_fails_clearly():
    import socket

    with socket.socket() as s:  # a free port that nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(InvalidRequestError, match=f"no drafter answered at {address}"):
        RemoteDrafter(address, vocab_size=VOCAB, secret=SECRET, connect_timeout_s=0.5)


def test_the_channel_refuses_a_wrong_secret(served):
    _, address = served
    stub = pb_grpc.SpeculationStub(grpc.insecure_channel(address))
    for metadata in ((), bearer("guess")):
        with pytest.raises(grpc.RpcError) as err:
            stub.Describe(pb.DescribeRequest(), timeout=10, metadata=metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Speculate(iter([pb.TargetMessage(seq=1)]), timeout=10, metadata=metadata))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(InvalidRequestError, match="^speculation_secret: the drafter at .* refused"):
        RemoteDrafter(address, vocab_size=VOCAB, secret="guess", connect_timeout_s=5)
