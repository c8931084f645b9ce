"""Mirror-SD's target side (arXiv 2510.13161, section 3): the early exit that hands the drafter its candidates
half-way through the verifying forward, and the statistics of how well that guess served.

The drafter's side (rolling out branches for the likely outcomes, reusing the one that matches the verdict) is
in orchestration/drafter_session.py.
"""

from __future__ import annotations

import logging
import time

import torch

from mirrorspec.orchestration.acceptance import Verdict
from mirrorspec.orchestration.draft_tree import DraftTree
from mirrorspec.orchestration.drafter_guard import DrafterGuard
from mirrorspec.orchestration.interfaces import ExitCandidates
from mirrorspec.orchestration.sequence import Sequence
from mirrorspec.workers.interface import EarlyExit, Worker

logger = logging.getLogger(__name__)


class MirrorExit:
    def __init__(self, target: Worker, drafter: DrafterGuard) -> None:
        self.target = target
        self.drafter = drafter
        vocabulary = drafter.service.vocabulary
        # The drafter proposes only these tokens: the exit head need not score the others.
        self._vocab = None if vocabulary is None else torch.tensor(vocabulary)
        self.window: tuple[float, float] | None = None  # (start, end) of this step's early-exit callback

    def request(self, rows: list[Sequence], trees: list[DraftTree]) -> EarlyExit | None:
        """The early exit of this step's verifying forward, if a mirror row has a window to verify."""
        self.window = None
        mirror = [s.spec.mode.early_exit and len(t) > 0 for s, t in zip(rows, trees)]
        if not any(mirror) or self.drafter.resting:
            return None
        positions = [len(t) + 1 if m else 0 for m, t in zip(mirror, trees)]
        layers = {s.spec.exit_layer or self.target.exit_layer for s, m in zip(rows, mirror) if m}
        kappa = max(s.spec.kappa for s, m in zip(rows, mirror) if m)

        def send(results: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
            started = time.perf_counter()
            candidates = []
            for seq, count, (ids, logps) in zip(rows, positions, results):
                if count:
                    seq.sync.exit_top = ids.tolist()
                    candidates.append(ExitCandidates(seq.seq_id, ids, logps))
            try:
                self.drafter.service.early_exit(candidates)
            except Exception:
                logger.exception("drafter failed on the early exit; the next drafts are drafted afresh")
            self.window = (started, time.perf_counter())

        return EarlyExit(min(layers), positions, kappa, send, self._vocab)

    @staticmethod
    def record(seq: Sequence, verdict: Verdict) -> None:
        """Whether the verified window was a reused branch, and whether the early exit's candidates held the
        token committed at the correction position (Mirror-SD App. E coverage)."""
        sync = seq.sync
        if sync.window_reused:
            seq.stats.reused_windows += 1
        if sync.exit_top is not None:
            seq.stats.exit_checked += 1
            seq.stats.exit_covered += verdict.next_token in sync.exit_top[len(verdict.path)]
        sync.window_reused, sync.exit_top = False, None
