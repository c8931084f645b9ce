"""The speculation channel's messages (protos/speculation.proto) <-> the drafter session's dataclasses.

Decoding checks everything a peer could get wrong and raises InvalidRequestError naming the field, e.g.
`propose.verdicts[1].committed`, so that a malformed message is refused with a clear error instead of corrupting
a KV cache. Arrays travel flat: trees as ids + parent indices + log-probs, early exits as [positions * kappa],
hidden states as raw float32 rows, sampled chains' proposal distributions as sparse (ids, probs) pairs.
"""

from __future__ import annotations

import math

import torch

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.draft_tree import ROOT, DraftTree
from mirrorspec.orchestration.interfaces import ExitCandidates, OpenSpec, Proposal, Report
from mirrorspec.params import SamplingParams
from mirrorspec.protos import speculation_pb2 as pb

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # hidden states of a long prompt batch travel in one Propose
# Both ends of the channel take messages up to that size.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


def _check_ids(ids, vocab_size: int, where: str) -> list[int]:
    ids = list(ids)
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(where, f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    return ids


def _check_unique(ids: list[int], where: str) -> None:
    if len(set(ids)) != len(ids):
        raise InvalidRequestError(where, "names a sequence twice")


# ------------------------------------------------------------------------------------------------ open
def encode_open(specs: list[OpenSpec]) -> pb.Open:
    return pb.Open(sequences=[
        pb.OpenSequence(id=s.seq_id, seed=s.seed, sampling=pb.Sampling(
            temperature=s.sampling.temperature, top_k=s.sampling.top_k, top_p=s.sampling.top_p))
        for s in specs
    ])


def decode_open(msg: pb.Open) -> list[OpenSpec]:
    specs = []
    for i, s in enumerate(msg.sequences):
        where = f"open.sequences[{i}]"
        try:
            sampling = SamplingParams(temperature=s.sampling.temperature, top_k=s.sampling.top_k,
                                      top_p=s.sampling.top_p).validate()
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{where}.sampling.{exc.field}", exc.reason) from None
        specs.append(OpenSpec(s.id, s.seed, sampling))
    _check_unique([s.seq_id for s in specs], "open.sequences")
    return specs


# ---------------------------------------------------------------------------------------------- propose
def _encode_features(features: torch.Tensor | None) -> pb.Features | None:
    if features is None:
        return None
    rows = features.detach().to(torch.float32).contiguous().cpu()
    return pb.Features(width=rows.shape[-1] if rows.dim() == 2 else 0, data=rows.numpy().tobytes())


def _decode_features(msg: pb.Features, width: int, where: str) -> torch.Tensor | None:
    if not msg.data:
        return None
    if msg.width != width:
        raise InvalidRequestError(f"{where}.width", f"is {msg.width}; this drafter takes {width}-wide hidden states")
    if len(msg.data) % (4 * width):
        raise InvalidRequestError(f"{where}.data", f"{len(msg.data)} bytes are not whole float32 rows of {width}")
    rows = torch.frombuffer(bytearray(msg.data), dtype=torch.float32).view(-1, width)
    if not torch.isfinite(rows).all():
        raise InvalidRequestError(f"{where}.data", "holds NaN or infinite values")
    return rows


def encode_propose(reports: list[Report]) -> pb.Propose:
    return pb.Propose(verdicts=[
        pb.Verdict(id=r.seq_id, committed=r.committed, accepted_nodes=r.accepted_nodes,
                   features=_encode_features(r.features), depth=r.depth, topk=r.topk, budget=r.budget,
                   branches=r.branches, min_path=r.min_path)
        for r in reports
    ])


def decode_propose(msg: pb.Propose, vocab_size: int, feature_size: int) -> list[Report]:
    reports = []
    for i, v in enumerate(msg.verdicts):
        where = f"propose.verdicts[{i}]"
        if not v.committed:
            raise InvalidRequestError(f"{where}.committed", "is empty: every report commits at least one token")
        if any(n < 0 for n in v.accepted_nodes):
            raise InvalidRequestError(f"{where}.accepted_nodes", "holds a negative node index")
        if v.topk < 1 or v.budget < v.depth:
            raise InvalidRequestError(f"{where}.topk", "a draft needs topk >= 1 and budget >= depth")
        if not 0.0 <= v.min_path <= 1.0:  # NaN fails too
            raise InvalidRequestError(f"{where}.min_path", f"must be a probability in [0, 1], got {v.min_path}")
        features = None
        if feature_size:
            features = _decode_features(v.features, feature_size, f"{where}.features")
        elif v.features.data:
            raise InvalidRequestError(f"{where}.features", "this drafter takes no hidden states")
        reports.append(Report(v.id, _check_ids(v.committed, vocab_size, f"{where}.committed"),
                              list(v.accepted_nodes), features, v.depth, v.topk, v.budget, v.branches,
                              v.min_path))
    _check_unique([r.seq_id for r in reports], "propose.verdicts")
    return reports


# ------------------------------------------------------------------------------------------- early exit
def encode_early_exit(candidates: list[ExitCandidates]) -> pb.EarlyExit:
    return pb.EarlyExit(sequences=[
        pb.ExitCandidates(id=c.seq_id, positions=c.ids.shape[0], kappa=c.ids.shape[1],
                          ids=c.ids.flatten().tolist(), logprobs=c.logprobs.flatten().tolist())
        for c in candidates
    ])


def decode_early_exit(msg: pb.EarlyExit, vocab_size: int) -> list[ExitCandidates]:
    out = []
    for i, c in enumerate(msg.sequences):
        where = f"early_exit.sequences[{i}]"
        n = c.positions * c.kappa
        if c.positions < 1 or c.kappa < 1 or len(c.ids) != n or len(c.logprobs) != n:
            raise InvalidRequestError(where, f"needs positions, kappa >= 1 and {c.positions} x {c.kappa} ids and "
                                             f"log-probs; got {len(c.ids)} and {len(c.logprobs)}")
        if any(not (lp <= 0.0) for lp in c.logprobs):  # also refuses NaN
            raise InvalidRequestError(f"{where}.logprobs", "log-probabilities must be <= 0")
        ids = torch.tensor(_check_ids(c.ids, vocab_size, f"{where}.ids")).view(c.positions, c.kappa)
        out.append(ExitCandidates(c.id, ids, torch.tensor(list(c.logprobs)).view(c.positions, c.kappa)))
    _check_unique([c.seq_id for c in out], "early_exit.sequences")
    return out


# ------------------------------------------------------------------------------------------------ drafts
def encode_drafts(proposals: dict[int, Proposal]) -> pb.Drafts:
    trees = []
    for seq_id, p in proposals.items():
        t = p.tree
        sparse = []
        if any(q is not None for q in t.proposals):
            for q in t.proposals:
                support = q.nonzero().flatten()
                sparse.append(pb.Proposal(ids=support.tolist(), probs=q[support].tolist()))
        trees.append(pb.Tree(id=seq_id, ids=t.tokens, parents=t.parents, logprobs=t.logprobs, proposals=sparse,
                             reused=p.reused))
    return pb.Drafts(trees=trees)


def decode_drafts(msg: pb.Drafts, vocab_size: int) -> dict[int, Proposal]:
    out: dict[int, Proposal] = {}
    for i, t in enumerate(msg.trees):
        where = f"drafts.trees[{i}]"
        n = len(t.ids)
        if len(t.parents) != n or len(t.logprobs) != n:
            raise InvalidRequestError(where, f"{n} ids need as many parents and log-probs; got "
                                             f"{len(t.parents)} and {len(t.logprobs)}")
        if any(not ROOT <= p < node for node, p in enumerate(t.parents)):
            raise InvalidRequestError(f"{where}.parents", "every parent must be -1 or an earlier node")
        if t.proposals and len(t.proposals) != n:
            raise InvalidRequestError(f"{where}.proposals", f"needs one per node ({n}), got {len(t.proposals)}")
        proposals: list[torch.Tensor | None] = [None] * n
        for k, q in enumerate(t.proposals):
            proposals[k] = _dense(q, vocab_size, f"{where}.proposals[{k}]")
        if t.id in out:
            raise InvalidRequestError("drafts.trees", "names a sequence twice")
        tree = DraftTree(tokens=_check_ids(t.ids, vocab_size, f"{where}.ids"), parents=list(t.parents),
                         proposals=proposals, logprobs=list(t.logprobs))
        out[t.id] = Proposal(tree, reused=t.reused)
    return out


def _dense(q: pb.Proposal, vocab_size: int, where: str) -> torch.Tensor:
    if len(q.ids) != len(q.probs) or not q.ids:
        raise InvalidRequestError(where, "needs as many probabilities as ids, at least one")
    probs = torch.tensor(list(q.probs), dtype=torch.float32)
    if not torch.isfinite(probs).all() or (probs < 0).any() or not math.isclose(float(probs.sum()), 1.0,
                                                                               abs_tol=1e-3):
        raise InvalidRequestError(f"{where}.probs", "must be finite, non-negative and sum to 1")
    dense = torch.zeros(vocab_size)
    dense[torch.tensor(_check_ids(q.ids, vocab_size, f"{where}.ids"))] = probs
    return dense
