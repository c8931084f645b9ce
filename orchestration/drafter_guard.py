"""Patience and back-off around a DraftService, so that a slow or failing drafter never stalls generation.

- Patience: a drafter gets at most about one (average) target step to answer a `propose`: a draft that takes
  longer than a plain step cannot pay for itself at the acceptance rates drafters reach. A later answer is dropped
  by the channel (the request's `late_drafts` counts it). An in-process drafter always answers.
- Cost: the measured seconds of a drafter forward against a whole step's give the drafting stop rule's threshold
  (`min_path`): a level is worth drafting when the tokens it may add are worth the forward it costs.
- Back-off: after a failure the engine decodes without drafts for 1, 2, 4, ... 64 steps (doubling with every
  consecutive failure), then reopens its sequences on the drafter (which may have come back) and tries again.
"""

from __future__ import annotations

import logging

from mirrorspec.orchestration.interfaces import DraftService, Proposal, Report

logger = logging.getLogger(__name__)

MAX_DRAFTER_BACKOFF = 64  # steps without drafts after many consecutive failures
DRAFT_PATIENCE_STEPS = 1.0  # target steps a drafter may take to answer
DRAFT_PATIENCE_FLOOR_S = 0.05  # ... but never less than this (scheduling jitter, tiny models)


class DrafterGuard:
    """Wraps the scheduler's DraftService: how long to wait for drafts, and when to rest a failing drafter."""

    def __init__(self, service: DraftService) -> None:
        self.service = service
        self.failures = 0  # consecutive
        self._steps = 0
        self._back_at = 0  # step from which the drafter is asked again after a failure
        self._step_seconds: float | None = None  # moving average of the target's decoding forward
        self._propose_seconds: float | None = None  # ... of a `propose` call that drafted
        self._forward_seconds: float | None = None  # ... of one of its drafter forwards

    def new_step(self) -> None:
        self._steps += 1

    def target_step_took(self, seconds: float) -> None:
        self._step_seconds = _average(self._step_seconds, seconds)

    def drafting_took(self, seconds: float, forwards: int) -> None:
        """A `propose` that drafted took `seconds` for `forwards` drafter forwards (a draft of depth d takes d: the
        catch-up forward gives the first level, each fed level the next)."""
        self._propose_seconds = _average(self._propose_seconds, seconds)
        self._forward_seconds = _average(self._forward_seconds, seconds / max(1, forwards))

    def min_path(self, tau: float) -> float:
        """The drafting stop rule's threshold for a row committing `tau` tokens per step: one more drafter forward
        costs f seconds of a t-second step, so a level pays when its expected extra tokens exceed tau * f / t
        (the row's tokens per second times the forward's seconds). 0 until both costs are measured."""
        if self._forward_seconds is None or self._step_seconds is None:
            return 0.0
        step = self._step_seconds + self._propose_seconds
        return min(1.0, tau * self._forward_seconds / step)

    @property
    def resting(self) -> bool:
        """Backing off after a failure: no drafter calls this step."""
        return self._steps < self._back_at

    @property
    def patience_s(self) -> float | None:
        if self._step_seconds is None:
            return None  # no step timed yet: the channel's own reply timeout applies
        return max(DRAFT_PATIENCE_FLOOR_S, DRAFT_PATIENCE_STEPS * self._step_seconds)

    def propose(self, reports: list[Report]) -> dict[int, Proposal] | None:
        return self.service.propose(reports, patience_s=self.patience_s) if reports else {}

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self) -> None:
        """Start (or lengthen) the back-off and make the drafter forget every sequence."""
        self.failures += 1
        backoff = min(MAX_DRAFTER_BACKOFF, 2 ** (self.failures - 1))
        logger.exception("drafter failed (%d in a row); decoding without drafts for %d step(s)",
                         self.failures, backoff)
        self._back_at = self._steps + backoff
        try:
            self.service.reset()
        except Exception:
            logger.exception("drafter could not be reset")


def _average(mean: float | None, sample: float) -> float:
    """An exponential moving average over about the last ten samples."""
    return sample if mean is None else 0.9 * mean + 0.1 * sample
