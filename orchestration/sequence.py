"""One request in flight (`Sequence`), what the drafter knows of it (`DrafterSync`), and how its committed tokens
become text and a finish reason (`TextTracker`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mirrorspec.orchestration.draft_tree import DraftTree
from mirrorspec.orchestration.logprobs import TokenLogprob
from mirrorspec.orchestration.ngram_draft import NgramIndex
from mirrorspec.orchestration.stats import RequestStats
from mirrorspec.params import SamplingParams, SpecParams


@dataclass
class DrafterSync:
    """The scheduler's record of what the drafter knows of one sequence, and the draft it sent to verify next."""

    open: bool = False  # the drafter holds this sequence
    reported_tokens: int = 0  # tokens of the sequence the drafter has been told
    reported_features: int = 0  # target hidden states it has been sent (feature drafters)
    accepted_nodes: list[int] = field(default_factory=list)  # of the last verified draft, not yet reported
    window: DraftTree | None = None  # the draft to verify at the next step
    drafter_nodes: int = 0  # how many of the window's nodes (its first ones) the drafter drafted; the rest are copied
    window_reused: bool = False  # mirror: that draft is a branch rolled out at the last early exit
    exit_top: list[list[int]] | None = None  # mirror: this step's early-exit top-kappa ids per window position
    # The adaptive budget (orchestration/spec_budget.py): depth of the deepest node it verified last time, and
    # while it keeps cutting whole drafts, steps to skip drafting (doubling up to MAX_IDLE_STEPS).
    deepest_kept: int | None = None
    idle_steps: int = 0
    backoff: int = 0

    def forget(self) -> None:
        """The drafter lost everything (it failed): reopen from scratch when it is asked again."""
        self.open, self.reported_tokens, self.reported_features = False, 0, 0
        self.accepted_nodes, self.window = [], None


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
    seed: int | None = None  # of the random stream (sampling requests), given or drawn
    finish_reason: str | None = None
    stop_sequence: str | None = None  # the stop string that ended it
    error: str | None = None  # why it ended with finish_reason "error" (a fault in its own step)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # per output token, when sampling.logprobs is set
    prompt_logprobs: list[TokenLogprob] | None = None  # prompt tokens 1.., when sampling.prompt_logprobs is set
    emitted_tokens: int = 0
    emitted_text: int = 0
    # Target hidden states of positions 0..n-1 (only kept for feature drafters): features[:n_features].
    features: torch.Tensor | None = None
    n_features: int = 0
    sync: DrafterSync = field(default_factory=DrafterSync)
    copies: NgramIndex = field(default_factory=NgramIndex)  # the text so far, for ngram branches (SpecParams)

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

    def deliver(self, seq: Sequence, tokens: list[int]) -> int:
        """Append committed tokens one by one, stopping exactly at EOS, the length limit or a stop string;
        returns how many were appended."""
        for count, token in enumerate(tokens, start=1):
            seq.output_ids.append(token)
            seq.tokens.append(token)
            seq.stats.generated_tokens += 1
            if self.decode is not None:
                previous = len(seq.text)
                seq.text = self.decode(seq.output_ids)
                if self._cut_at_stop(seq, previous):
                    return count
            if token in self.eos_ids and not seq.sampling.ignore_eos:
                seq.finish_reason = "eos"
                return count
            if seq.remaining <= 0:
                seq.finish_reason = "length"
                return count
        return len(tokens)

    @staticmethod
    def _cut_at_stop(seq: Sequence, previous: int) -> bool:
        for stop in seq.sampling.stop:
            at = seq.text.find(stop, max(0, previous - len(stop)))
            if at >= 0:
                seq.text = seq.text[: at + len(stop) if seq.sampling.include_stop else at]
                seq.finish_reason, seq.stop_sequence = "stop", stop
                return True
        return False
