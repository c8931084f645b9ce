"""Continuous batching: requests join and leave between steps; each step is one target forward for all of them.

A step: admit waiting requests (prefill) and ask the drafter for their first drafts; verify every row's draft in
one batched target forward (for `mirror` rows, the target's early exit goes to the drafter half-way through);
accept per row (each row commits its own number of tokens); roll the target's KV cache back to the accepted path;
stream the committed tokens; retire finished rows; report the verdicts to the drafter, which answers with the
next drafts (for `mirror`, usually rolled out already while the target was finishing).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mirrorspec.orchestration.acceptance import DraftTree, Verdict, verify_greedy, verify_sampling
from mirrorspec.orchestration.interfaces import DraftService, EarlyExit, ExitCandidates, OpenSpec, Report, Worker
from mirrorspec.orchestration.params import SamplingParams, SpecParams
from mirrorspec.orchestration.sampling import probabilities
from mirrorspec.orchestration.stats import RequestStats, StepTiming

logger = logging.getLogger(__name__)

# After a drafter failure the engine decodes without drafts for a number of steps that doubles with every
# consecutive failure (1, 2, 4, ... up to this), then reopens its sequences on the drafter and tries again.
MAX_DRAFTER_BACKOFF = 64
# A remote drafter gets at most this many (average) target steps to answer; slower answers are not waited for:
# a draft that takes longer than a plain step cannot pay for itself at the acceptance rates drafters reach.
DRAFT_PATIENCE_STEPS = 1.0
DRAFT_PATIENCE_FLOOR_S = 0.05  # ... but never less than this (scheduling jitter, tiny models)
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
    # The drafter's side: whether it knows this sequence, how much of it was reported, the draft to verify next.
    drafter_open: bool = False
    reported_tokens: int = 0
    reported_features: int = 0
    accepted_nodes: list[int] = field(default_factory=list)  # of the last verified draft, not yet reported
    window: DraftTree | None = None
    window_reused: bool = False
    exit_top: list[list[int]] | None = None  # mirror: early-exit top-kappa ids per window position

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
        drafter: DraftService | None,
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
        self.drafter_failures = 0  # consecutive
        self._steps = 0
        self._drafter_back_at = 0  # step from which the drafter is asked again after a failure
        self._exit_vocab = None if drafter is None or drafter.vocabulary is None else torch.tensor(drafter.vocabulary)
        self.timing = StepTiming()
        self._step_seconds: float | None = None  # moving average of the target's decoding forward
        self._exit_window: tuple[float, float] | None = None  # (start, end) of this step's early exit

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
        self._steps += 1
        self._admit()
        if not self.running:
            return []
        rows = list(self.running)
        self._propose([s for s in rows if not s.drafter_open])  # new rows (or all, after a drafter failure)
        trees = [s.window if s.window is not None else DraftTree() for s in rows]
        self._exit_window = None
        started = time.perf_counter()
        logits, hidden = self.target.forward_hidden(
            [s.seq_id for s in rows],
            [[s.tokens[-1]] for s in rows],
            [t.tokens for t in trees],
            [t.parents for t in trees],
            early_exit=self._early_exit(rows, trees),
        )
        self._time_target(started, time.perf_counter())
        target_paths: dict[int, list[int]] = {}
        for seq, tree, out, hid in zip(rows, trees, logits, hidden):
            verdict = self._verify(seq, tree, out)
            target_paths[seq.seq_id] = verdict.path
            if self._wants_features(seq):
                seq.add_features(hid[[0] + [1 + n for n in verdict.path]])
            seq.stats.record_step(len(tree), len(verdict.path))
            self._record_mirror(seq, verdict)
            seq.accepted_nodes = verdict.path
            seq.window = None
            self.text.deliver(seq, [tree.tokens[n] for n in verdict.path] + [verdict.next_token])
            if seq.stats.first_token_time is None:
                seq.stats.first_token_time = time.perf_counter()
        self.target.commit(target_paths)
        self._retire([s for s in rows if s.finished])
        self._propose([s for s in rows if not s.finished])
        return rows

    def _admit(self) -> None:
        joining = []
        while self.waiting and len(self.running) + len(joining) < self.max_batch:
            joining.append(self.waiting.popleft())
        # Shortest first: prefill groups of similar length waste little on padding and get consecutive slots.
        joining.sort(key=lambda s: len(s.tokens))
        for seq in joining:
            self.target.open(seq.seq_id)
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

    # ---------------------------------------------------------------------------------- drafting
    def _propose(self, rows: list[Sequence]) -> None:
        """Report the rows' verdicts to the drafter and take its next drafts (on failure: no drafts)."""
        rows = [s for s in rows if self._wants_draft(s)]
        if not rows or self._steps < self._drafter_back_at:
            return
        reports = []
        try:
            joining = [s for s in rows if not s.drafter_open]
            if joining:
                self.drafter.open([OpenSpec(s.seq_id, int(torch.randint(2**62, (), generator=s.generator)),
                                            s.sampling) for s in joining])
                for seq in joining:
                    seq.drafter_open = True
            for seq in rows:
                depth, topk, budget = seq.spec.shape()
                depth = min(depth, seq.remaining - 1)  # never draft past max_new_tokens
                if depth < 1:
                    continue
                features = None
                if self.drafter.uses_features:
                    if seq.n_features == 0:  # a one-token prompt: no hidden state to draft from until a step ran
                        continue
                    features = seq.features[seq.reported_features : seq.n_features]
                reports.append(Report(seq.seq_id, seq.tokens[seq.reported_tokens :], seq.accepted_nodes, features,
                                      depth, topk, max(depth, min(budget, depth * topk)),
                                      branches=seq.spec.method == "mirror"))
            started = time.perf_counter()
            patience = None
            if self._step_seconds is not None:
                patience = max(DRAFT_PATIENCE_FLOOR_S, DRAFT_PATIENCE_STEPS * self._step_seconds)
            proposals = self.drafter.propose(reports, patience_s=patience) if reports else {}
            self.timing.propose_s += time.perf_counter() - started
        except Exception:  # a failing drafter must never stop generation: decode without drafts for a while
            self._drafter_failed(rows)
            return
        self.drafter_failures = 0
        if proposals is None:  # the drafter is still busy with an earlier report: these wait for the next call
            for seq in rows:
                seq.stats.late_drafts += 1
            return
        by_id = {s.seq_id: s for s in rows}
        for report in reports:
            seq = by_id[report.seq_id]
            seq.reported_tokens = len(seq.tokens)
            seq.reported_features = seq.n_features
            seq.accepted_nodes = []
            proposal = proposals.get(seq.seq_id)
            if proposal is not None:
                seq.window, seq.window_reused = proposal.tree, proposal.reused
            else:
                seq.stats.late_drafts += 1  # this step goes without a draft; the drafter hears the verdict next

    def _drafter_failed(self, rows: list[Sequence]) -> None:
        self.drafter_failures += 1
        backoff = min(MAX_DRAFTER_BACKOFF, 2 ** (self.drafter_failures - 1))
        logger.exception("drafter failed (%d in a row); decoding without drafts for %d step(s)",
                         self.drafter_failures, backoff)
        self._drafter_back_at = self._steps + backoff
        for seq in self.running:
            # Whatever the drafter knew is lost: reopen from scratch when it is asked again.
            seq.drafter_open, seq.reported_tokens, seq.reported_features = False, 0, 0
            seq.accepted_nodes, seq.window = [], None
            if self._wants_draft(seq) and seq in rows:
                seq.stats.fallback_steps += 1
        try:
            self.drafter.reset()
        except Exception:
            logger.exception("drafter could not be reset")

    def _early_exit(self, rows: list[Sequence], trees: list[DraftTree]) -> EarlyExit | None:
        """Mirror rows send the early exit's candidates at each window position to the drafter."""
        mirror = [s.spec.method == "mirror" and len(t) > 0 for s, t in zip(rows, trees)]
        if not any(mirror) or self._steps < self._drafter_back_at:
            return None
        positions = [len(t) + 1 if m else 0 for m, t in zip(mirror, trees)]
        layers = {s.spec.exit_layer or self.target.exit_layer for s, m in zip(rows, mirror) if m}
        kappa = max(s.spec.kappa for s, m in zip(rows, mirror) if m)

        def send(results: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
            self._exit_window = (time.perf_counter(), 0.0)
            candidates = []
            for seq, count, (ids, logps) in zip(rows, positions, results):
                if count:
                    seq.exit_top = ids.tolist()
                    candidates.append(ExitCandidates(seq.seq_id, ids, logps))
            try:
                self.drafter.early_exit(candidates)
            except Exception:
                logger.exception("drafter failed on the early exit; the next drafts are drafted afresh")
            self._exit_window = (self._exit_window[0], time.perf_counter())

        return EarlyExit(min(layers), positions, kappa, send, self._exit_vocab)

    def _time_target(self, started: float, ended: float) -> None:
        t = self.timing
        seconds = ended - started
        t.steps += 1
        t.target_s += seconds
        self._step_seconds = seconds if self._step_seconds is None else 0.9 * self._step_seconds + 0.1 * seconds
        if self._exit_window is not None:
            # The exit's logits/top-k are measured from the early-exit callback's start; the (tiny) logit-lens
            # matmul before it counts as lower layers.
            exit_start, exit_end = self._exit_window
            t.exit_steps += 1
            t.lower_s += exit_start - started
            t.exit_s += exit_end - exit_start
            t.upper_s += ended - exit_end

    @staticmethod
    def _record_mirror(seq: Sequence, verdict: Verdict) -> None:
        if seq.window_reused:
            seq.stats.reused_windows += 1
        if seq.exit_top is not None:
            seq.stats.exit_checked += 1
            seq.stats.exit_covered += verdict.next_token in seq.exit_top[len(verdict.path)]
        seq.window_reused, seq.exit_top = False, None

    def _verify(self, seq: Sequence, tree: DraftTree, logits: torch.Tensor) -> Verdict:
        generated = len(seq.output_ids)
        if seq.sampling.min_new_tokens > generated and self.text.eos_ids:
            # Hold EOS back at every output row whose token would come before min_new_tokens (row 0: the next
            # token; the row of node i: the token after it). Drafts are verified against this same law.
            positions = torch.tensor([generated] + [generated + tree.depth(i) for i in range(len(tree))])
            rows = (positions < seq.sampling.min_new_tokens).nonzero()[:, 0].to(logits.device)
            eos = torch.tensor(sorted(self.text.eos_ids), device=logits.device)
            logits = logits.clone()
            logits[rows[:, None], eos[None]] = float("-inf")
        if seq.sampling.greedy:
            return verify_greedy(tree, logits.argmax(dim=-1).tolist())
        return verify_sampling(tree, probabilities(logits, seq.sampling), seq.generator)

    def _retire(self, done: list[Sequence]) -> None:
        for seq in done:
            seq.stats.finish_time = time.perf_counter()
            self.running.remove(seq)
            self.target.release(seq.seq_id)
        leaving = [s.seq_id for s in done if s.drafter_open]
        if leaving and self.drafter is not None:
            try:
                self.drafter.release(leaving)
            except Exception:
                self._drafter_failed([])
