"""Continuous batching: requests join and leave between steps; each step is one target forward for all of them.

A step: admit waiting requests (prefill), draft a tree for every speculating request (one batched drafter forward
per tree level), verify every row's tree in one batched target forward, accept per row (each row commits its own
number of tokens), roll both KV caches back to the accepted path, stream the committed tokens, retire finished rows.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mirrorspec.orchestration.acceptance import DraftTree, Verdict, verify_greedy, verify_sampling
from mirrorspec.orchestration.drafting import Draft, DraftJob, draft_trees
from mirrorspec.orchestration.interfaces import Worker
from mirrorspec.orchestration.params import SamplingParams, SpecParams
from mirrorspec.orchestration.sampling import probabilities
from mirrorspec.orchestration.stats import RequestStats

logger = logging.getLogger(__name__)

# Consecutive drafter failures after which the engine stops asking it and decodes as `ar`.
DRAFTER_FAILURE_LIMIT = 3
# Padded tokens per prefill forward: joining prompts are prefilled in groups of about this size.
PREFILL_TOKEN_BUDGET = 4096


@dataclass
class Sequence:
    """One request in flight: its tokens so far, parameters, random stream, text and statistics."""

    seq_id: int
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    spec: SpecParams
    generator: torch.Generator
    stats: RequestStats
    tokens: list[int] = field(init=False)  # prompt + generated; the last one is not yet in the target's cache
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    emitted_tokens: int = 0
    emitted_text: int = 0
    # Target hidden states of positions 0..n-1 (only kept for feature drafters): features[:n_features].
    features: torch.Tensor | None = None
    n_features: int = 0

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt_ids)
        self.stats.prompt_tokens = len(self.prompt_ids)

    def add_features(self, rows: torch.Tensor) -> None:
        if self.features is None:
            size = len(self.prompt_ids) + self.sampling.max_new_tokens
            self.features = torch.empty(size, rows.shape[-1], dtype=rows.dtype)
        self.features[self.n_features : self.n_features + rows.shape[0]] = rows.cpu()
        self.n_features += rows.shape[0]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def remaining(self) -> int:
        return self.sampling.max_new_tokens - len(self.output_ids)


class TextTracker:
    """Decodes generated ids and finds stop strings; without a tokenizer there is no text."""

    def __init__(self, decode: Callable[[list[int]], str] | None, eos_ids: set[int]) -> None:
        self.decode = decode
        self.eos_ids = eos_ids

    def deliver(self, seq: Sequence, tokens: list[int]) -> None:
        """Append committed tokens one by one, stopping exactly at EOS, the length limit or a stop string."""
        for token in tokens:
            seq.output_ids.append(token)
            seq.tokens.append(token)
            seq.stats.generated_tokens += 1
            if self.decode is not None:
                previous = len(seq.text)
                seq.text = self.decode(seq.output_ids)
                if self._cut_at_stop(seq, previous):
                    return
            if token in self.eos_ids and not seq.sampling.ignore_eos:
                seq.finish_reason = "eos"
                return
            if seq.remaining <= 0:
                seq.finish_reason = "length"
                return

    @staticmethod
    def _cut_at_stop(seq: Sequence, previous: int) -> bool:
        for stop in seq.sampling.stop:
            at = seq.text.find(stop, max(0, previous - len(stop)))
            if at >= 0:
                seq.text = seq.text[:at]
                seq.finish_reason = "stop"
                return True
        return False


class Scheduler:
    def __init__(
        self,
        target: Worker,
        drafter: Worker | None,
        *,
        max_batch: int,
        text: TextTracker,
    ) -> None:
        self.target = target
        self.drafter = drafter
        self.max_batch = max_batch
        self.text = text
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._drafter_failures = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> Sequence | None:
        for seq in list(self.waiting):
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                seq.finish_reason = "abort"
                return seq
        for seq in self.running:
            if seq.request_id == request_id:
                seq.finish_reason = "abort"
                self._retire([seq])
                return seq
        return None

    # --------------------------------------------------------------------------------------- step
    def step(self) -> list[Sequence]:
        """Run one decoding step; return the sequences that committed tokens (finished ones included)."""
        self._admit()
        if not self.running:
            return []
        rows = list(self.running)
        drafts = self._draft(rows)
        trees = [drafts[s.seq_id].tree if s.seq_id in drafts else DraftTree() for s in rows]
        logits, hidden = self.target.forward_hidden(
            [s.seq_id for s in rows],
            [[s.tokens[-1]] for s in rows],
            [t.tokens for t in trees],
            [t.parents for t in trees],
        )
        target_paths: dict[int, list[int]] = {}
        drafter_paths: dict[int, list[int]] = {}
        for seq, tree, out, hid in zip(rows, trees, logits, hidden):
            verdict = self._verify(seq, tree, out)
            target_paths[seq.seq_id] = verdict.path
            if self._wants_features(seq):
                seq.add_features(hid[[0] + [1 + n for n in verdict.path]])
            if seq.seq_id in drafts:
                # A feature drafter's tree nodes were computed from its own guesses of the hidden states: drop
                # them and re-feed the accepted tokens with the target's real ones (EAGLE does the same).
                keep = not self.drafter.uses_features
                drafter_paths[seq.seq_id] = _fed_prefix(drafts[seq.seq_id], verdict.path) if keep else []
            seq.stats.record_step(len(tree), len(verdict.path))
            self.text.deliver(seq, [tree.tokens[n] for n in verdict.path] + [verdict.next_token])
            if seq.stats.first_token_time is None:
                seq.stats.first_token_time = time.perf_counter()
        self.target.commit(target_paths)
        if drafter_paths and self.drafter is not None:
            self.drafter.commit(drafter_paths)
        self._retire([s for s in rows if s.finished])
        return rows

    def _admit(self) -> None:
        joining = []
        while self.waiting and len(self.running) + len(joining) < self.max_batch:
            joining.append(self.waiting.popleft())
        # Shortest first: prefill groups of similar length waste little on padding and get consecutive slots.
        joining.sort(key=lambda s: len(s.tokens))
        for seq in joining:
            self.target.open(seq.seq_id)
            if self._wants_draft(seq):
                self.drafter.open(seq.seq_id)
        group: list[Sequence] = []
        for seq in (s for s in joining if len(s.tokens) > 1):
            if group and (len(group) + 1) * len(seq.tokens) > PREFILL_TOKEN_BUDGET:
                self._prefill(group)
                group = []
            group.append(seq)
        if group:
            self._prefill(group)
        self.running += joining

    def _prefill(self, group: list[Sequence]) -> None:
        # Everything but the last prompt token: that one is fed by the first decoding step.
        _, hidden = self.target.forward_hidden([s.seq_id for s in group], [s.tokens[:-1] for s in group])
        for seq, hid in zip(group, hidden):
            if self._wants_features(seq):
                seq.add_features(hid)

    def _wants_draft(self, seq: Sequence) -> bool:
        return self.drafter is not None and seq.spec.method != "ar"

    def _wants_features(self, seq: Sequence) -> bool:
        return self._wants_draft(seq) and self.drafter.uses_features

    def _draft(self, rows: list[Sequence]) -> dict[int, Draft]:
        jobs = []
        for seq in rows:
            if not self._wants_draft(seq):
                continue
            depth, topk, budget = seq.spec.shape()
            depth = min(depth, seq.remaining - 1)  # never draft past max_new_tokens
            if depth < 1:
                continue
            done = self.drafter.length(seq.seq_id)
            if not self.drafter.uses_features:
                jobs.append(DraftJob(seq.seq_id, seq.tokens[done:], depth, topk, budget, seq.sampling, seq.generator))
            elif seq.n_features > done:
                # Position p of a feature drafter takes the target's hidden state at p and token p + 1.
                jobs.append(DraftJob(seq.seq_id, seq.tokens[done + 1 :], depth, topk, budget, seq.sampling,
                                     seq.generator, catchup_features=seq.features[done : seq.n_features]))
        if not jobs:
            return {}
        try:
            drafts = draft_trees(self.drafter, jobs)
        except Exception:  # a failing drafter must never stop generation: decode this step without drafts
            self._drafter_failures += 1
            logger.exception("drafter failed (%d in a row); decoding this step without a draft", self._drafter_failures)
            for seq in rows:
                if self._wants_draft(seq):
                    seq.stats.fallback_steps += 1
            self._reset_drafter([job.seq_id for job in jobs])
            return {}
        self._drafter_failures = 0
        return {job.seq_id: d for job, d in zip(jobs, drafts)}

    def _reset_drafter(self, seq_ids: list[int]) -> None:
        if self._drafter_failures >= DRAFTER_FAILURE_LIMIT:
            logger.error("drafter failed %d times in a row; continuing without it (ar)", self._drafter_failures)
            self.drafter = None
            return
        try:
            for seq_id in seq_ids:
                self.drafter.clear_speculation(seq_id)
        except Exception:
            logger.exception("drafter could not be reset; continuing without it (ar)")
            self.drafter = None

    @staticmethod
    def _verify(seq: Sequence, tree: DraftTree, logits: torch.Tensor) -> Verdict:
        if seq.sampling.greedy:
            return verify_greedy(tree, logits.argmax(dim=-1).tolist())
        return verify_sampling(tree, probabilities(logits, seq.sampling), seq.generator)

    def _retire(self, done: list[Sequence]) -> None:
        for seq in done:
            seq.stats.finish_time = time.perf_counter()
            self.running.remove(seq)
            self.target.release(seq.seq_id)
            if self.drafter is not None and seq.spec.method != "ar":
                self.drafter.release(seq.seq_id)


def _fed_prefix(draft: Draft, path: list[int]) -> list[int]:
    """The drafter-side nodes of the accepted path, up to the first node the drafter never fed."""
    fed = []
    for node in path:
        index = draft.drafter_nodes[node]
        if index is None:
            break
        fed.append(index)
    return fed
