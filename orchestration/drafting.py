"""Drafting token trees with a drafter model: top-k expansion with a depth and a node budget.

Each level keeps the `topk` best children over the whole frontier, scored by the cumulative draft log-probability
of their path; at the end the `budget` best nodes over all levels form the tree (EAGLE-2's dynamic tree,
arXiv 2406.16858). With topk = 1 this is a chain; a chain for a sampling request draws its tokens from the
drafter's distribution (so that rejection sampling can use min(1, p/q)), every other node is a deterministic
top-k pick. All rows of a batch expand together: one drafter forward per level. A row stops early where its
next level is unlikely to pay for the drafter forward it costs (`min_path`, set by the scheduler from measured
costs: the drafting half of SpecDec++'s stop rule, arXiv 2405.19715; the verifying half is
orchestration/spec_budget.py). Stopping depends only on the drafter's own numbers, so the verifier's law holds.

A feature drafter (EAGLE-style) takes a hidden state with every token: the target's for the catch-up tokens,
and its own output at the parent for each tree node (the target has not seen the node yet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mirrorspec.orchestration.draft_tree import ROOT, DraftTree
from mirrorspec.orchestration.sampling import log_probabilities, probabilities, sample
from mirrorspec.params import SamplingParams
from mirrorspec.workers.interface import Worker


@dataclass
class DraftJob:
    seq_id: int
    catchup: list[int]  # committed tokens the drafter has not seen yet, ending with the last committed token
    depth: int
    topk: int
    budget: int
    params: SamplingParams
    generator: torch.Generator
    catchup_features: torch.Tensor | None = None  # [len(catchup), H] for feature drafters
    min_path: float = 0.0  # the stop rule (below); 0 drafts the whole shape


@dataclass
class Draft:
    tree: DraftTree
    # The drafter's speculative-node index of each tree node, None for nodes it never fed (the last level).
    drafter_nodes: list[int | None]
    # The hidden state each node was (or would be) fed with: the drafter's output at its parent.
    parent_hidden: list[torch.Tensor]


@dataclass
class _Expansion:
    job: DraftJob
    # (tree node or ROOT, drafter logits at that node, drafter hidden state at that node)
    frontier: list[tuple[int, torch.Tensor, torch.Tensor]]
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    proposals: list[torch.Tensor | None] = field(default_factory=list)
    fed: list[int | None] = field(default_factory=list)
    fed_count: int = 0
    parent_hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # node -> hidden state of its parent

    def grow(self) -> list[int]:
        """Add one level of children; return the new tree nodes."""
        job = self.job
        sampled_chain = job.topk == 1 and not job.params.greedy
        candidates: list[tuple[float, int, int, torch.Tensor | None]] = []
        hidden_of = {node: hidden for node, _, hidden in self.frontier}
        bases = [self.scores[node] if node != ROOT else 0.0 for node, _, _ in self.frontier]
        if sampled_chain:
            for base, (node, logits, _) in zip(bases, self.frontier):
                token, logq, q = _sampled_child(logits, job.params, job.generator)
                candidates.append((base + logq, token, node, q))
        elif self.frontier:  # the whole level's top-k in one call: [nodes, V] -> [nodes, topk]
            logp = log_probabilities(torch.stack([logits for _, logits, _ in self.frontier]), job.params)
            values, tokens = torch.topk(logp, min(job.topk, logp.shape[-1]))
            for base, (node, _, _), row_values, row_tokens in zip(bases, self.frontier, values.tolist(),
                                                                   tokens.tolist()):
                candidates += [(base + v, t, node, None) for v, t in zip(row_values, row_tokens) if v > -math.inf]
        candidates.sort(key=lambda c: -c[0])  # stable: ties keep frontier order
        new = []
        for score, token, parent, proposal in candidates[: job.topk]:
            self.parent_hidden[len(self.tokens)] = hidden_of[parent]
            new.append(len(self.tokens))
            self.tokens.append(token)
            self.parents.append(parent)
            self.scores.append(score)
            self.proposals.append(proposal)
            self.fed.append(None)
        return new

    def worth_feeding(self, nodes: list[int]) -> bool:
        """The stop rule: feed a level only if some node's children may reach the job's `min_path`. A child's path
        estimate is predicted as its parent's times the parent's own probability (confidence runs along a path)."""
        floor = self.job.min_path
        return floor <= 0.0 or any(2 * self.scores[n] - self._parent_score(n) >= math.log(floor) for n in nodes)

    def _parent_score(self, node: int) -> float:
        parent = self.parents[node]
        return 0.0 if parent == ROOT else self.scores[parent]

    def mark_fed(self, nodes: list[int]) -> list[int]:
        """Give nodes drafter indices; return their parents' drafter indices (-1 = the last committed token)."""
        parents = []
        for node in nodes:
            self.fed[node] = self.fed_count
            self.fed_count += 1
            parent = self.parents[node]
            parents.append(ROOT if parent == ROOT else self.fed[parent])
        return parents

    def finish(self) -> Draft:
        budget = self.job.budget
        # Best `budget` nodes by path score; a child never scores above its parent (log q <= 0) and ties keep
        # the parent first, so the kept set is closed under ancestors.
        order = sorted(range(len(self.tokens)), key=lambda n: (-self.scores[n], n))[:budget]
        kept = sorted(order)
        new_index = {old: i for i, old in enumerate(kept)}
        parents = [ROOT if self.parents[n] == ROOT else new_index[self.parents[n]] for n in kept]
        tree = DraftTree(
            tokens=[self.tokens[n] for n in kept],
            parents=parents,
            proposals=[self.proposals[n] for n in kept],
            logprobs=[self.scores[n] - (0.0 if p == ROOT else self.scores[kept[p]]) for n, p in zip(kept, parents)],
        )
        return Draft(tree=tree, drafter_nodes=[self.fed[n] for n in kept],
                     parent_hidden=[self.parent_hidden[n] for n in kept])


def draft_trees(drafter: Worker, jobs: list[DraftJob]) -> list[Draft]:
    """Catch each sequence's drafter cache up, then expand all trees level by level."""
    seq_ids = [job.seq_id for job in jobs]
    features = [job.catchup_features for job in jobs] if drafter.uses_features else None
    root_logits, root_hidden = drafter.forward_hidden(seq_ids, [job.catchup for job in jobs], features=features)
    states = [_Expansion(job, frontier=[(ROOT, out[0], hid[-1])])
              for job, out, hid in zip(jobs, root_logits, root_hidden)]
    for level in range(1, max(job.depth for job in jobs) + 1):
        feed = []
        for state in states:
            if level > state.job.depth:
                continue
            new = state.grow()
            state.frontier = []
            if level < state.job.depth and new and state.worth_feeding(new):
                feed.append((state, new))
        if not feed:
            continue
        logits, hidden = drafter.forward_hidden(
            [s.job.seq_id for s, _ in feed],
            [[] for _ in feed],
            [[s.tokens[n] for n in new] for s, new in feed],
            [s.mark_fed(new) for s, new in feed],
            features=[torch.stack([s.parent_hidden[n] for n in new]) for s, new in feed]
            if drafter.uses_features else None,
        )
        for (state, new), out, hid in zip(feed, logits, hidden):
            state.frontier = list(zip(new, out, hid))
    return [state.finish() for state in states]


def _sampled_child(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator):
    """A child drawn from the drafter's distribution q: (token, log q(token), q)."""
    q = probabilities(logits[None], params)[0]
    token = sample(q, generator)
    return token, float(torch.log(q[token])), q


@dataclass
class BranchJob:
    """Mirror-SD: roll out the window that follows `first` if the target commits `first` after `anchor`."""

    seq_id: int
    anchor: int  # the drafter's speculative node `first` hangs from (ROOT: the last committed token)
    anchor_hidden: torch.Tensor | None  # the drafter's output at the anchor (the feature fed with `first`)
    first: int  # the token the target is expected to commit there (a correction, or the bonus)
    length: int  # draft tokens after `first`
    params: SamplingParams
    generator: torch.Generator


@dataclass
class Branch:
    first_node: int  # the drafter's speculative node of `first`
    tree: DraftTree  # the chain after `first` (its root is `first`)
    nodes: list[int | None]  # the drafter's speculative node of each chain token (None: never fed)
    parent_hidden: list[torch.Tensor]


def roll_out_branches(drafter: Worker, jobs: list[BranchJob], spec_counts: dict[int, int]) -> list[Branch]:
    """Feed every branch's first token under its anchor, then extend all branches as chains, one batched
    drafter forward per level. `spec_counts` (speculative nodes per sequence so far) is advanced in place."""
    tips = [(job.anchor, job.first, job.anchor_hidden) for job in jobs]  # (parent node, token, its feature)
    branches = [Branch(first_node=-1, tree=DraftTree(), nodes=[], parent_hidden=[]) for _ in jobs]
    active = [b for b, job in enumerate(jobs) if job.length > 0]
    while active:
        by_seq: dict[int, list[int]] = {}
        for b in active:
            by_seq.setdefault(jobs[b].seq_id, []).append(b)
        groups = list(by_seq.values())
        logits, hidden = drafter.forward_hidden(
            list(by_seq),
            [[] for _ in groups],
            [[tips[b][1] for b in bs] for bs in groups],
            [[tips[b][0] for b in bs] for bs in groups],
            features=[torch.stack([tips[b][2] for b in bs]) for bs in groups] if drafter.uses_features else None,
        )
        active = []
        for seq_id, bs, row_logits, row_hidden in zip(by_seq, groups, logits, hidden):
            base = spec_counts[seq_id]
            spec_counts[seq_id] += len(bs)
            for k, b in enumerate(bs):
                job, branch, node = jobs[b], branches[b], base + k
                if branch.first_node < 0:
                    branch.first_node = node
                else:
                    branch.nodes[-1] = node
                if job.params.greedy:
                    logp = log_probabilities(row_logits[k][None], job.params)[0]
                    token, proposal = int(logp.argmax()), None
                    logq = float(logp[token])
                else:
                    token, logq, proposal = _sampled_child(row_logits[k], job.params, job.generator)
                tree = branch.tree
                tree.parents.append(len(tree.tokens) - 1)  # ROOT (-1) for the first chain token
                tree.tokens.append(token)
                tree.proposals.append(proposal)
                tree.logprobs.append(logq)
                branch.nodes.append(None)
                branch.parent_hidden.append(row_hidden[k])
                if len(tree.tokens) < job.length:
                    tips[b] = (node, token, row_hidden[k])
                    active.append(b)
    return branches
