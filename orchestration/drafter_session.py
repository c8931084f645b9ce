"""The drafter's side of speculation: what it knows of each sequence, and the drafts it proposes.

The target side talks to a drafter only through this object's four calls (in-process, or through the gRPC
speculation channel, whose server wraps one of these next to the drafter model):

  open / release   sequences join and leave
  propose          "here is what I committed since my last call (tokens, accepted nodes of your last draft,
                   my hidden states if you take them); give me the next draft"
  early_exit       Mirror-SD (arXiv 2510.13161, section 3): "I am verifying your window; my early exit at layer l_e
                   says these are the likely tokens at each position": the drafter rolls out the next window
                   for the likely outcomes (r window tokens accepted, then correction v) while the target finishes.
                   The next `propose` reuses the branch that matches the verdict, or drafts afresh.

The drafter keeps its own KV cache in step: after a verdict a token-level drafter keeps the accepted nodes it
already fed; a feature drafter drops them and re-feeds the committed tokens with the target's real hidden states
(its nodes were fed with its own guesses, as EAGLE does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from mirrorspec.errors import InvalidRequestError
from mirrorspec.orchestration.draft_tree import ROOT
from mirrorspec.orchestration.drafting import Branch, BranchJob, DraftJob, draft_trees, roll_out_branches
from mirrorspec.orchestration.interfaces import DraftService, ExitCandidates, OpenSpec, Proposal, Report
from mirrorspec.orchestration.sampling import seeded_generator
from mirrorspec.params import SamplingParams
from mirrorspec.workers.interface import Worker


@dataclass
class _Window:
    """The chain a mirror sequence is being verified on; branches hang from its root or its tokens."""

    tokens: list[int]
    root_hidden: torch.Tensor | None  # the drafter's output at the last committed token
    nodes: list[int | None]  # the drafter's speculative node of each window token (None: not fed yet)
    hidden: list[torch.Tensor | None]  # the drafter's output at each window token
    tail_feature: torch.Tensor | None = None  # what the last token is fed with, if it is not fed yet

    def anchor(self, accepted: int) -> tuple[int, torch.Tensor | None]:
        """Where the branch for `accepted` window tokens hangs: (drafter node, drafter output there)."""
        if accepted == 0:
            return ROOT, self.root_hidden
        return self.nodes[accepted - 1], self.hidden[accepted - 1]


@dataclass
class _State:
    sampling: SamplingParams
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)  # committed tokens the target reported
    features: torch.Tensor | None = None  # target hidden states of positions [feature_base, n_features)
    feature_base: int = 0
    n_features: int = 0
    cached: int = 0  # committed tokens in the drafter's KV cache
    spec: int = 0  # speculative nodes in the drafter's KV cache
    sent_nodes: list[int | None] = field(default_factory=list)  # drafter node of each node of the last draft
    window: _Window | None = None
    # Mirror: next windows rolled out at the last early exit, by (accepted count, committed token).
    branches: dict[tuple[int, int], Branch] = field(default_factory=dict)
    pending: Branch | None = None  # a reused window whose nodes are fed after the answer is sent

    def add_features(self, rows: torch.Tensor) -> None:
        self.features = rows if self.features is None else torch.cat([self.features, rows])
        self.n_features += rows.shape[0]

    def catchup_features(self, start: int) -> torch.Tensor:
        """Hidden states of positions [start, n_features). The drafter's cache only grows, so no later catch-up
        starts before `start`: the rows before it are dropped here."""
        self.features = self.features[start - self.feature_base :]
        self.feature_base = start
        return self.features


def as_draft_service(drafter: Worker | DraftService, *, max_spec_nodes: int, branch_budget: int = 8) -> DraftService:
    """A DraftService as it is (a block-diffusion drafter, a remote drafter); a drafter model's Worker inside a
    DrafterSession."""
    if isinstance(drafter, DraftService):
        return drafter
    return DrafterSession(drafter, max_spec_nodes=max_spec_nodes, branch_budget=branch_budget)


class DrafterSession:
    """Drafts for the sequences of one target, over one drafter `Worker` (and its KV cache)."""

    drafts_by_diffusion = False

    def __init__(self, drafter: Worker, *, max_spec_nodes: int, branch_budget: int = 8) -> None:
        self.drafter = drafter
        self.uses_features = drafter.uses_features
        self.feature_layers = tuple(drafter.feature_layers)
        self.vocabulary = drafter.vocabulary
        self.max_spec_nodes = max_spec_nodes
        # Branches per step over the batch's greedy rows (fewer each at larger batch); a sampled row rolls out one.
        self.branch_budget = branch_budget
        self._seqs: dict[int, _State] = {}
        self.busy_s = 0.0  # compute time since the owner last read it
        self.propose_s = 0.0  # ... of which inside `propose`

    # ------------------------------------------------------------------------------------ lifecycle
    def open(self, specs: list[OpenSpec]) -> None:
        for spec in specs:
            if spec.seq_id in self._seqs:
                raise InvalidRequestError("open.id", f"sequence {spec.seq_id} is already open")
            self.drafter.open(spec.seq_id)
            self._seqs[spec.seq_id] = _State(spec.sampling, seeded_generator(spec.seed))

    def release(self, seq_ids: list[int]) -> None:
        for seq_id in seq_ids:
            if self._seqs.pop(seq_id, None) is not None:
                self.drafter.release(seq_id)

    def reset(self) -> None:
        self.release(list(self._seqs))

    def _state(self, seq_id: int, where: str) -> _State:
        state = self._seqs.get(seq_id)
        if state is None:
            raise InvalidRequestError(where, f"sequence {seq_id} is not open")
        return state

    # -------------------------------------------------------------------------------------- propose
    def propose(self, reports: list[Report], patience_s: float | None = None) -> dict[int, Proposal]:
        self.prepare_pending()  # normally done already, right after the previous answer
        started = time.perf_counter()
        states = [self._state(r.seq_id, "propose.id") for r in reports]
        for report, state in zip(reports, states):
            self._check(report, state)
        out: dict[int, Proposal] = {}
        fresh: list[tuple[Report, _State]] = []
        keep: dict[int, list[int]] = {}
        for report, state in zip(reports, states):
            branch = self._take_branch(report, state)
            keep[report.seq_id] = self._kept_path(report, state, branch)
            state.tokens += report.committed
            if report.features is not None and report.features.shape[0]:
                state.add_features(report.features.float())
            if branch is not None:
                out[report.seq_id] = Proposal(branch.tree, reused=True)
                state.pending = branch
            elif report.depth > 0:
                fresh.append((report, state))
        self.drafter.commit(keep)
        for seq_id, path in keep.items():
            state = self._seqs[seq_id]
            state.cached += len(path)
            state.spec = 0
            state.window, state.branches, state.sent_nodes = None, {}, []
        if fresh:
            out.update(self._draft_fresh(fresh))
        elapsed = time.perf_counter() - started
        self.busy_s += elapsed
        self.propose_s += elapsed
        return out

    def _check(self, report: Report, state: _State) -> None:
        if not report.committed:
            raise InvalidRequestError("propose.committed", f"sequence {report.seq_id}: nothing committed")
        if len(report.accepted_nodes) > len(state.sent_nodes):
            raise InvalidRequestError("propose.accepted_nodes",
                                      f"sequence {report.seq_id}: more accepted nodes than the last draft had")
        if report.depth < 0 or report.topk < 1 or report.budget < report.depth:
            raise InvalidRequestError("propose.depth", f"sequence {report.seq_id}: bad draft shape")
        if self.uses_features:
            rows = 0 if report.features is None else report.features.shape[0]
            if state.n_features + rows == 0:
                raise InvalidRequestError("propose.features",
                                          f"sequence {report.seq_id}: a feature drafter needs the target's hidden states")
            if state.n_features + rows > len(state.tokens) + len(report.committed):
                raise InvalidRequestError("propose.features",
                                          f"sequence {report.seq_id}: more hidden states than committed tokens")

    @staticmethod
    def _take_branch(report: Report, state: _State):
        if not report.branches or not state.branches:
            return None
        branch = state.branches.get((len(report.accepted_nodes), report.committed[-1]))
        return branch if branch is not None and len(branch.tree) == report.depth else None

    def _kept_path(self, report: Report, state: _State, branch: Branch | None) -> list[int]:
        """Drafter nodes to keep as committed: the fed prefix of the accepted path (token-level drafters only)."""
        if self.uses_features:
            return []
        path: list[int] = []
        for node in report.accepted_nodes:
            fed = state.sent_nodes[node]
            if fed is None:
                return path
            path.append(fed)
        if branch is not None and len(path) == len(report.accepted_nodes):
            path.append(branch.first_node)  # the committed correction/bonus, fed as the branch's first token
        return path

    def _catchup(self, state: _State) -> tuple[list[int], torch.Tensor | None]:
        """Committed tokens the drafter has not fed yet (a feature drafter pairs token p + 1 with state p)."""
        if not self.uses_features:
            return state.tokens[state.cached :], None
        return state.tokens[state.cached + 1 :], state.catchup_features(state.cached)

    def _draft_fresh(self, work: list[tuple[Report, _State]]) -> dict[int, Proposal]:
        jobs = []
        for report, state in work:
            tokens, feats = self._catchup(state)
            if self.uses_features and not tokens:
                raise InvalidRequestError("propose.features", f"sequence {report.seq_id}: no hidden state to draft from")
            jobs.append(DraftJob(report.seq_id, tokens, report.depth, report.topk, report.budget, state.sampling,
                                 state.generator, catchup_features=feats, min_path=report.min_path))
        drafts = draft_trees(self.drafter, jobs)
        out = {}
        for (report, state), job, draft in zip(work, jobs, drafts):
            state.cached += len(job.catchup)
            state.spec = sum(n is not None for n in draft.drafter_nodes)
            state.sent_nodes = draft.drafter_nodes
            if report.branches and report.topk == 1:
                # Node r's input feature is the drafter's output at node r - 1; the last node is not fed yet.
                hidden = [draft.parent_hidden[r + 1] for r in range(len(draft.tree) - 1)] + [None]
                state.window = _Window(list(draft.tree.tokens), draft.parent_hidden[0], list(draft.drafter_nodes),
                                       hidden, tail_feature=draft.parent_hidden[-1])
            out[report.seq_id] = Proposal(draft.tree)
        return out

    # ------------------------------------------------------------------------- mirror: early exit
    def prepare_pending(self) -> None:
        """Feed the windows taken from branches (catch-up + window nodes) so that the next branches can hang off
        them. The gRPC server runs this after sending its answer: off the target's critical path."""
        ready = [(seq_id, s) for seq_id, s in self._seqs.items() if s.pending is not None]
        if not ready:
            return
        started = time.perf_counter()
        appends, feats = [], []
        for _, state in ready:
            tokens, catch_feats = self._catchup(state)
            appends.append(tokens)
            if self.uses_features:
                feats.append(torch.cat([catch_feats, torch.stack(state.pending.parent_hidden)]))
        chains = [state.pending.tree.tokens for _, state in ready]
        _, hidden = self.drafter.forward_hidden([seq_id for seq_id, _ in ready], appends, chains,
                                                [list(range(-1, len(c) - 1)) for c in chains],
                                                features=feats if self.uses_features else None)
        for (_, state), app, chain, hid in zip(ready, appends, chains, hidden):
            root_hidden = hid[len(app) - 1] if app else state.pending.parent_hidden[0]
            state.window = _Window(list(chain), root_hidden, list(range(len(chain))), list(hid[len(app):]))
            state.cached += len(app)
            state.spec = len(chain)
            state.sent_nodes = list(range(len(chain)))
            state.pending = None
        self.busy_s += time.perf_counter() - started

    def _feed_tails(self, states: list[tuple[int, _State]]) -> None:
        """Feed the last token of fresh windows, which anchors the branches for a fully accepted window."""
        tails = [(seq_id, s) for seq_id, s in states if s.window.nodes[-1] is None]
        if not tails:
            return
        _, hidden = self.drafter.forward_hidden(
            [seq_id for seq_id, _ in tails], [[] for _ in tails], [[s.window.tokens[-1]] for _, s in tails],
            [[ROOT if len(s.window.nodes) == 1 else s.window.nodes[-2]] for _, s in tails],
            features=[s.window.tail_feature[None] for _, s in tails] if self.uses_features else None)
        for (_, state), hid in zip(tails, hidden):
            state.window.nodes[-1] = state.spec
            state.window.hidden[-1] = hid[0]
            state.sent_nodes = list(state.window.nodes)
            state.spec += 1

    def early_exit(self, candidates: list[ExitCandidates]) -> None:
        """Roll out the next window for the likeliest outcomes of the verification in flight."""
        self.prepare_pending()
        started = time.perf_counter()
        live = []
        for cand in candidates:
            state = self._state(cand.seq_id, "early_exit.id")
            if state.window is None:
                continue
            if cand.ids.shape[0] != len(state.window.tokens) + 1:
                raise InvalidRequestError("early_exit.positions",
                                          f"sequence {cand.seq_id}: {cand.ids.shape[0]} positions for a "
                                          f"{len(state.window.tokens)}-token window (expected one more)")
            live.append((cand, state))
        self._feed_tails([(cand.seq_id, state) for cand, state in live])
        jobs: list[BranchJob] = []
        keys: list[tuple[int, int, int]] = []
        shared = max(1, self.branch_budget // max(1, len(live)))
        for cand, state in live:
            window = state.window
            room = (self.max_spec_nodes - state.spec) // len(window.tokens)
            # A sampled row draws its branches from its own random stream, and its later drafts (so its output)
            # depend on those draws: their number must not depend on the batch. It rolls out its likeliest
            # outcome only; greedy rows share the budget (their output is the target's argmax whatever the drafts).
            per_seq = shared if state.sampling.greedy else 1
            for r, token in self._likely_outcomes(window, cand, min(per_seq, room)):
                anchor, hidden = window.anchor(r)
                jobs.append(BranchJob(cand.seq_id, anchor, hidden, token, len(window.tokens), state.sampling,
                                      state.generator))
                keys.append((cand.seq_id, r, token))
        if jobs:
            counts = {seq_id: self._seqs[seq_id].spec for seq_id in {j.seq_id for j in jobs}}
            for (seq_id, r, token), branch in zip(keys, roll_out_branches(self.drafter, jobs, counts)):
                self._seqs[seq_id].branches[(r, token)] = branch
            for seq_id, count in counts.items():
                self._seqs[seq_id].spec = count
        self.busy_s += time.perf_counter() - started

    @staticmethod
    def _likely_outcomes(window: _Window, cand: ExitCandidates, limit: int) -> list[tuple[int, int]]:
        """(accepted count r, committed token v) pairs to roll out, scored by the early exit's distributions:
        P(r accepted, then v) ~ prod_{j<r} p_j(window[j]) * p_r(v), v != window[r] (r = len(window): the bonus).
        Every anchor's best candidate comes first, likeliest anchor first: a logit lens half-way up is a rough
        guide to how far the window will be accepted, and the best branch per anchor is cheap insurance."""
        best: list[tuple[float, int, int]] = []
        rest: list[tuple[float, int, int]] = []
        prefix = 0.0
        for r in range(len(window.tokens) + 1):
            ids, logps = cand.ids[r].tolist(), cand.logprobs[r].tolist()
            nxt = window.tokens[r] if r < len(window.tokens) else None  # None: the bonus position
            options = sorted(((prefix + lp, r, v) for v, lp in zip(ids, logps) if v != nxt), reverse=True)
            best += options[:1]
            rest += options[1:]
            if nxt is not None:
                # A window token outside the top-kappa has at most the kappa-th probability.
                prefix += logps[ids.index(nxt)] if nxt in ids else logps[-1]
        best.sort(reverse=True)
        rest.sort(reverse=True)
        return [(r, v) for _, r, v in (best + rest)[:limit]]
