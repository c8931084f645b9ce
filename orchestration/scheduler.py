"""Continuous batching: requests join and leave between steps; each step is one target forward for all of them.

A step: admit waiting requests (prefill) and ask the drafter for their first drafts; choose how much of each
row's draft pays at this load (orchestration/spec_budget.py); verify that, for every row in one batched target
forward (for `mirror` rows, the target's early exit goes to the drafter half-way through);
accept per row (each row commits its own number of tokens); roll the target's KV cache back to the accepted path;
stream the committed tokens; retire finished rows; report the verdicts to the drafter, which answers with the
next drafts (for `mirror`, usually rolled out already while the target was finishing).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import torch

from mirrorspec.methods import AR_DRAFTER
from mirrorspec.orchestration.acceptance import Verdict, verify_greedy, verify_sampling
from mirrorspec.orchestration.draft_tree import DraftTree, merge
from mirrorspec.orchestration.drafter_guard import DrafterGuard
from mirrorspec.orchestration.interfaces import DraftService, OpenSpec, Report
from mirrorspec.orchestration.logits_processing import needs_processing, process
from mirrorspec.orchestration.logprobs import token_logprobs
from mirrorspec.orchestration.mirror import MirrorExit
from mirrorspec.orchestration.ngram_corpus import CorpusIndex
from mirrorspec.orchestration.sampling import probabilities
from mirrorspec.orchestration.sequence import Sequence, TextTracker
from mirrorspec.orchestration.spec_budget import RowDraft, path_estimates, plan, prune
from mirrorspec.orchestration.stats import StepTiming
from mirrorspec.orchestration.step_cost import StepCost
from mirrorspec.workers.interface import Worker

logger = logging.getLogger(__name__)

# Padded tokens per prefill forward: joining prompts are prefilled in groups of about this size.
PREFILL_TOKEN_BUDGET = 4096
# The most steps a row goes without drafting after the budget cut its whole drafts (until a row leaves the batch).
MAX_IDLE_STEPS = 16


class Scheduler:
    def __init__(self, target: Worker, drafters: dict[str, DraftService], *, max_batch: int,
                 text: TextTracker, step_cost: StepCost | Callable[[], StepCost] | None = None,
                 max_spec_nodes: int = 64, ngram_corpus: CorpusIndex | None = None) -> None:
        """`drafters`: by drafter kind (mirrorspec/methods.py), the services that draft for the rows whose method
        drafts with that kind; each row talks to its own kind's service only. `step_cost`: the target's forward
        cost curve for the adaptive budget, a probe that measures it (called once, when first needed), or None
        to verify every draft whole. `ngram_corpus`: what ngram branches also copy from."""
        self.target = target
        self.drafters = {kind: DrafterGuard(service) for kind, service in drafters.items()}
        for service in drafters.values():
            if service.uses_features:  # the target's hidden states it returns are what this drafter reads
                target.set_output_layers(service.feature_layers)
        self.drafter = self.drafters.get(AR_DRAFTER)  # the drafter model Mirror-SD's early exit feeds
        self.mirror = None if self.drafter is None else MirrorExit(target, self.drafter)
        self.max_batch = max_batch
        self.text = text
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.timing = StepTiming()
        self.step_cost = step_cost
        self.max_spec_nodes = max_spec_nodes
        self.ngram_corpus = ngram_corpus

    @property
    def drafter_failures(self) -> int:
        """Consecutive failures of the most failing drafter (0: every drafter answers, or there is none)."""
        return max((guard.failures for guard in self.drafters.values()), default=0)

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
        for guard in self.drafters.values():
            guard.new_step()
        self._measure_step_cost()
        self._admit()
        if not self.running:
            return []
        rows = list(self.running)
        self._propose([s for s in rows if not s.sync.open])  # new rows (or all, after a drafter failure)
        drafted = [s.sync.window if s.sync.window is not None else DraftTree() for s in rows]
        kept = self._budget(rows, drafted)
        trees = [prune(tree, nodes) for tree, nodes in zip(drafted, kept)]
        started = time.perf_counter()
        logits, hidden = self.target.forward_hidden(
            [s.seq_id for s in rows],
            [[s.tokens[-1]] for s in rows],
            [t.tokens for t in trees],
            [t.parents for t in trees],
            early_exit=None if self.mirror is None else self.mirror.request(rows, trees),
        )
        self._time_target(started, time.perf_counter())
        target_paths: dict[int, list[int]] = {}
        for seq, draft, tree, nodes, out, hid in zip(rows, drafted, trees, kept, logits, hidden):
            try:
                verdict = self._verify(seq, tree, out)
            except Exception as exc:  # a fault in one row's numbers ends that row; the others go on
                logger.warning("request %s failed: %s", seq.request_id, exc)
                seq.finish_reason, seq.error = "error", f"{type(exc).__name__}: {exc}"
                target_paths[seq.seq_id] = []
                continue
            target_paths[seq.seq_id] = verdict.path
            chose = [0] + [1 + n for n in verdict.path]  # the output row that chose each committed token
            if self._wants_features(seq):
                seq.add_features(hid[chose])
            seq.stats.record_step(len(tree), len(verdict.path), sum(path_estimates(tree)))
            seq.stats.unverified += len(draft) - len(tree)
            if self._adaptive(seq) and len(draft):
                self._follow_budget(seq, tree)
            if self.mirror is not None:
                self.mirror.record(seq, verdict)
            # The drafter's own node numbers: the accepted path's nodes it drafted (copied nodes come after them,
            # and only copied nodes hang below a copied node).
            seq.sync.accepted_nodes = [nodes[n] for n in verdict.path if nodes[n] < seq.sync.drafter_nodes]
            seq.sync.window = None
            committed = [tree.tokens[n] for n in verdict.path] + [verdict.next_token]
            kept = self.text.deliver(seq, committed)
            if seq.sampling.logprobs is not None:
                seq.logprobs += token_logprobs(out[chose[:kept]], committed[:kept], seq.sampling.logprobs)
            if seq.stats.first_token_time is None:
                seq.stats.first_token_time = time.perf_counter()
        self.target.commit(target_paths)
        self._retire([s for s in rows if s.finished])
        self._propose([s for s in rows if not s.finished])
        return rows

    # ------------------------------------------------------------------------------------ budget
    def _adaptive(self, seq: Sequence) -> bool:
        """Whether the budget may cut this row's drafts (Mirror-SD windows are verified whole: their branches are
        rolled out for every window position)."""
        return seq.spec.adaptive and self._wants_draft(seq) and not seq.spec.mode.early_exit

    def _budgeted(self, seq: Sequence) -> bool:
        """Whether the budget sizes this row's drafts now (an adaptive row, with a measured cost curve)."""
        return isinstance(self.step_cost, StepCost) and self._adaptive(seq)

    def _measure_step_cost(self) -> None:
        """Probe the target's cost curve once, before the first step with an adaptive row, while a KV slot is
        free for the probe (a few forwards: about a second for a 135M model on two CPU cores)."""
        if self.step_cost is None or isinstance(self.step_cost, StepCost) or len(self.running) >= self.max_batch:
            return
        if any(self._adaptive(s) for s in [*self.waiting, *self.running]):
            self.step_cost = self.step_cost()

    @staticmethod
    def _follow_budget(seq: Sequence, verified: DraftTree) -> None:
        """Shape the row's next drafts by what the budget kept of this one: one level deeper than its deepest
        verified node, and none at all for a while when it kept nothing (drafting would be wasted work)."""
        sync = seq.sync
        sync.deepest_kept = max((verified.depth(n) for n in range(len(verified))), default=0)
        if len(verified):
            sync.backoff = 0
        else:
            sync.backoff = min(2 * sync.backoff or 1, MAX_IDLE_STEPS)
            sync.idle_steps = sync.backoff

    def _budget(self, rows: list[Sequence], trees: list[DraftTree]) -> list[list[int]]:
        """Per row, the draft nodes to verify this step."""
        if not isinstance(self.step_cost, StepCost):
            return [list(range(len(tree))) for tree in trees]
        return plan([RowDraft(tree, self._adaptive(s)) for s, tree in zip(rows, trees)], self.step_cost)

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
            if seq.sampling.prompt_logprobs is not None and seq.prompt_logprobs is None:
                # Prompt row i chose token i + 1: the target's logits at the prompt rows (the same forward for
                # every method, so the same bits).
                seq.prompt_logprobs = token_logprobs(self.target.logits(hid), seq.prompt_ids[1:],
                                                     seq.sampling.prompt_logprobs)

    def _wants_draft(self, seq: Sequence) -> bool:
        return seq.spec.mode.drafter in self.drafters

    def _wants_features(self, seq: Sequence) -> bool:
        return self._wants_draft(seq) and self.drafters[seq.spec.mode.drafter].service.uses_features

    # ---------------------------------------------------------------------------------- drafting
    def _propose(self, rows: list[Sequence]) -> None:
        """Report the rows' verdicts to their drafters and take the next drafts (a drafter that fails: its rows
        go without drafts for a while)."""
        for kind, guard in self.drafters.items():
            self._propose_with(guard, [s for s in rows if s.spec.mode.drafter == kind])

    def _propose_with(self, guard: DrafterGuard, rows: list[Sequence]) -> None:
        if not rows or guard.resting:
            return
        service = guard.service
        reports = []
        try:
            joining = [s for s in rows if not s.sync.open]
            if joining:
                service.open([OpenSpec(s.seq_id, int(torch.randint(2**62, (), generator=s.generator)), s.sampling)
                              for s in joining])
                for seq in joining:
                    seq.sync.open = True
            for seq in rows:
                report = self._report(seq, guard)
                if report is not None:
                    reports.append(report)
            started = time.perf_counter()
            proposals = guard.propose(reports)
            seconds = time.perf_counter() - started
            self.timing.propose_s += seconds
        except Exception:  # a failing drafter must never stop generation: decode without drafts for a while
            self._drafter_failed(guard, rows)
            return
        guard.succeeded()
        if proposals is None:  # the drafter is still busy with an earlier report: these wait for the next call
            for seq in rows:
                seq.stats.late_drafts += 1
            return
        fresh = [p.tree for p in proposals.values() if not p.reused and len(p.tree)]
        if fresh:
            guard.drafting_took(seconds, max(t.depth(n) for t in fresh for n in range(len(t))))
        by_id = {s.seq_id: s for s in rows}
        for report in reports:
            seq = by_id[report.seq_id]
            seq.sync.reported_tokens = len(seq.tokens)
            seq.sync.reported_features = seq.n_features
            seq.sync.accepted_nodes = []
            proposal = proposals.get(seq.seq_id)
            if proposal is not None:
                seq.sync.window, seq.sync.window_reused = proposal.tree, proposal.reused
                seq.sync.drafter_nodes = len(proposal.tree)
                if self._copies(seq, proposal.tree):
                    seq.sync.window = merge(proposal.tree, self._copied(seq, report), self.max_spec_nodes - 1)
            else:
                seq.stats.late_drafts += 1  # this step goes without a draft; the drafter hears the verdict next

    @staticmethod
    def _copies(seq: Sequence, draft: DraftTree) -> bool:
        """Whether the row's model draft takes ngram branches: asked for, a model-drafted method without Mirror-SD's
        windows, and deterministic nodes only (a sampled chain's rejection rule is for one child per node)."""
        mode = seq.spec.mode
        return (seq.spec.ngram_branches and mode.drafter == AR_DRAFTER and not mode.early_exit
                and all(q is None for q in draft.proposals))

    def _copied(self, seq: Sequence, report: Report) -> DraftTree:
        """What `ngram` drafts for the row now, in the shape its drafter was asked for."""
        seq.copies.extend(seq.tokens[len(seq.copies.tokens):])
        corpus = self.ngram_corpus if seq.spec.copies_corpus else None
        return seq.copies.draft(report.depth, report.topk, report.budget, corpus)

    def _report(self, seq: Sequence, guard: DrafterGuard) -> Report | None:
        """What the drafter has not heard of this sequence yet, and the shape of the next draft (None: no draft
        this step)."""
        service = guard.service
        depth, topk, budget = seq.spec.shape()
        depth = min(depth, seq.remaining - 1)  # never draft past max_new_tokens
        if self._adaptive(seq) and seq.sync.deepest_kept is not None:
            if seq.sync.idle_steps > 0:
                seq.sync.idle_steps -= 1
                return None
            # A draft grows back a level per step when the load falls.
            depth = min(depth, seq.sync.deepest_kept + 1)
        if depth < 1:
            return None
        features = None
        if service.uses_features:
            if seq.n_features == 0:  # a one-token prompt: no hidden state to draft from until a step ran
                return None
            features = seq.features[seq.sync.reported_features : seq.n_features]
        return Report(seq.seq_id, seq.tokens[seq.sync.reported_tokens :], seq.sync.accepted_nodes, features,
                      depth, topk, max(depth, min(budget, depth * topk)), branches=seq.spec.mode.early_exit,
                      min_path=guard.min_path(max(1.0, seq.stats.tau)) if self._budgeted(seq) else 0.0,
                      corpus=seq.spec.copies_corpus)

    def _drafter_failed(self, guard: DrafterGuard, rows: list[Sequence]) -> None:
        guard.failed()
        for seq in self.running:
            if self.drafters.get(seq.spec.mode.drafter) is guard:
                seq.sync.forget()
                if seq in rows:
                    seq.stats.fallback_steps += 1

    def _time_target(self, started: float, ended: float) -> None:
        t = self.timing
        seconds = ended - started
        t.steps += 1
        t.target_s += seconds
        for guard in self.drafters.values():
            guard.target_step_took(seconds)
        window = None if self.mirror is None else self.mirror.window
        if window is not None:
            # The exit's logits/top-k are measured from the early-exit callback's start; the (tiny) logit-lens
            # matmul before it counts as lower layers.
            exit_start, exit_end = window
            t.exit_steps += 1
            t.lower_s += exit_start - started
            t.exit_s += exit_end - exit_start
            t.upper_s += ended - exit_end

    def _verify(self, seq: Sequence, tree: DraftTree, logits: torch.Tensor) -> Verdict:
        # x * 0 is 0 for a finite x and NaN for inf or NaN: one pass, a tenth of isfinite().all()'s time here (which
        # builds a bool tensor of the whole [nodes, vocab] block: 1.1 ms against 0.1 for 24 nodes of a 49k vocab).
        if not bool((logits * 0).sum() == 0):
            raise FloatingPointError("the target's logits for this request are not finite (NaN or infinity)")
        generated = len(seq.output_ids)
        if needs_processing(seq.sampling, generated):
            logits = process(logits, seq.sampling, seq.tokens, generated, tree, self.text.eos_ids)
        if seq.sampling.greedy:
            return verify_greedy(tree, logits.argmax(dim=-1).tolist())
        return verify_sampling(tree, probabilities(logits, seq.sampling), seq.generator)

    def _retire(self, done: list[Sequence]) -> None:
        for seq in done:
            seq.stats.finish_time = time.perf_counter()
            self.running.remove(seq)
            self.target.release(seq.seq_id)
        if done:
            for seq in self.running:  # the load fell: drafts may pay again
                seq.sync.idle_steps = 0
        for kind, guard in self.drafters.items():
            leaving = [s.seq_id for s in done if s.sync.open and s.spec.mode.drafter == kind]
            if leaving:
                try:
                    guard.service.release(leaving)
                except Exception:
                    self._drafter_failed(guard, [])
