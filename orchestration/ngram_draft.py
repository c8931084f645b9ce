"""Model-free drafts (`ngram`): continuations of the text itself, looked up by the sequence's last tokens.

Text often repeats itself: answers quote their prompt (extraction, summaries, code edits), and code and lists
repeat their own lines. So the sequence so far (prompt and output) is its own drafter: find earlier places where
its last n tokens occurred (longest n first) and propose what followed them. Prompt lookup decoding (Saxena, 2023)
proposes one such continuation; here, as in SuffixDecoding (Oliaro et al., arXiv 2411.04975), the continuations
of several earlier occurrences are merged into a token tree (shared prefixes once, the newest occurrence's
branch first), so that a copied span and its alternatives are verified in one forward. Every node is a
deterministic proposal, so the target's verification keeps the output identical to `ar` (greedy) and keeps its
law (sampling: EAGLE's multi-branch rule for deterministic children, orchestration/acceptance.py).

The index is updated online from the tokens each report commits; nothing is trained and no model runs, so it
works for any target, costs microseconds per step, and drafts nothing when the text has no repeat to offer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mirrorspec.orchestration.draft_tree import ROOT, DraftTree, merge
from mirrorspec.orchestration.interfaces import ExitCandidates, OpenSpec, Proposal, Report

if TYPE_CHECKING:
    from mirrorspec.orchestration.ngram_corpus import CorpusIndex

MAX_NGRAM = 4  # the longest suffix looked up
MIN_NGRAM = 2  # a single-token match proposes too often to pay for its verification
MAX_OCCURRENCES = 8  # earlier occurrences merged into one draft (the newest first)


class NgramIndex:
    """One sequence's tokens, and for every n-gram (n = MIN..MAX_NGRAM) the positions right after its earlier
    occurrences (oldest first)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.after: dict[tuple[int, ...], list[int]] = {}

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.tokens.append(token)
            end = len(self.tokens) - 1  # `token`'s position: it follows the n-grams that end just before it
            for n in range(MIN_NGRAM, min(MAX_NGRAM, end) + 1):
                self.after.setdefault(tuple(self.tokens[end - n:end]), []).append(end)

    def continuations(self, length: int) -> list[list[int]]:
        """What followed earlier occurrences of the current suffix, longest matching suffix first, then the
        newest occurrence first; each at most `length` tokens."""
        found: list[list[int]] = []
        for n in range(min(MAX_NGRAM, len(self.tokens)), MIN_NGRAM - 1, -1):
            for start in reversed(self.after.get(tuple(self.tokens[-n:]), ())):
                found.append(self.tokens[start:start + length])
                if len(found) == MAX_OCCURRENCES:
                    return found
        return found

    def draft(self, depth: int, topk: int, budget: int, corpus: CorpusIndex | None = None) -> DraftTree:
        """The continuations merged into a tree (`continuation_tree`); with a corpus, what followed the same
        suffix there joins after them, with its own estimates (orchestration/ngram_corpus.py)."""
        tree = continuation_tree(self.continuations(depth), depth, topk, budget)
        if corpus is not None and len(tree) < budget:
            tree = merge(tree, corpus.draft(self.tokens, depth, topk, budget), budget)
        return tree


def continuation_tree(continuations: list[list[int]], depth: int, topk: int, budget: int) -> DraftTree:
    """Continuations merged into a tree, the first ones' branches first: at most `depth` levels, `topk` children
    per node and `budget` nodes, in topological order (a node's parent comes before it). A node's log-probability
    is its share of the continuations that reach its parent, by Laplace's rule of succession ((n + 1) / (N + 2): a
    span seen once continues as before with chance 2/3), which the adaptive budget reads as its chance of
    acceptance."""
    tree = DraftTree()
    children: dict[int, dict[int, int]] = {ROOT: {}}  # node -> {token: child node}
    reached = {ROOT: 0}  # node -> continuations that pass through it
    for continuation in continuations:
        node = ROOT
        reached[ROOT] += 1
        for token in continuation[:depth]:
            child = children[node].get(token)
            if child is None:
                if len(children[node]) >= topk or len(tree) >= budget:
                    break
                child = len(tree)
                tree.tokens.append(token)
                tree.parents.append(node)
                tree.proposals.append(None)  # deterministic
                children[node][token] = child
                children[child] = {}
                reached[child] = 0
            reached[child] += 1
            node = child
    tree.logprobs = [math.log((reached[n] + 1) / (reached[p] + 2)) for n, p in enumerate(tree.parents)]
    return tree


class NgramDraftService:
    """The DraftService (orchestration/interfaces.py) of `ngram`: one NgramIndex per open sequence, and the
    corpus they all also copy from (None: their own text only)."""

    uses_features = False
    feature_layers: tuple[int, ...] = ()
    vocabulary = None
    drafts_by_diffusion = False

    def __init__(self, corpus: CorpusIndex | None = None) -> None:
        self._indexes: dict[int, NgramIndex] = {}
        self.corpus = corpus

    def open(self, specs: list[OpenSpec]) -> None:
        for spec in specs:
            self._indexes[spec.seq_id] = NgramIndex()

    def release(self, seq_ids: list[int]) -> None:
        for seq_id in seq_ids:
            self._indexes.pop(seq_id, None)

    def propose(self, reports: list[Report], patience_s: float | None = None) -> dict[int, Proposal]:
        proposals = {}
        for report in reports:
            index = self._indexes[report.seq_id]
            index.extend(report.committed)
            corpus = self.corpus if report.corpus else None
            proposals[report.seq_id] = Proposal(index.draft(report.depth, report.topk, report.budget, corpus))
        return proposals

    def early_exit(self, candidates: list[ExitCandidates]) -> None:
        """No early exit: `ngram` is not Mirror-SD."""

    def prepare_pending(self) -> None:
        """Nothing is left for later."""

    def reset(self) -> None:
        self._indexes.clear()
