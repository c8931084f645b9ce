"""The small interface orchestration uses to talk to a model worker (in-process object or, later, a Ray actor)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from mirrorspec.orchestration.acceptance import DraftTree
from mirrorspec.orchestration.params import SamplingParams


@dataclass
class EarlyExit:
    """Mirror-SD's early exit: after `layer` decoder layers, the target's final norm and LM head (the logit lens)
    give top-`kappa` candidates at the first `positions[r]` outputs of row r (root first); `callback` gets them
    (per row: ids [P, kappa], log-probs [P, kappa]) while the upper layers still run."""

    layer: int
    positions: list[int]
    kappa: int
    callback: Callable[[list[tuple[torch.Tensor, torch.Tensor]]], None]
    vocab: torch.Tensor | None = None  # restrict the exit head to these token ids (a cheaper head)


class Worker(Protocol):
    vocab_size: int
    num_layers: int
    exit_layer: int  # mirror's default early-exit layer
    uses_features: bool  # a feature drafter: each fed token comes with a hidden state (see drafting.py)
    vocabulary: list[int] | None  # the tokens a drafter can propose (None: the whole vocabulary)

    def open(self, seq_id: int) -> None:
        """Give a new sequence a KV slot."""

    def release(self, seq_id: int) -> None:
        """Free the sequence's slot."""

    def length(self, seq_id: int) -> int:
        """Number of committed tokens in the sequence's KV cache."""

    def forward(
        self,
        seq_ids: list[int],
        appends: list[list[int]],
        nodes: list[list[int]] | None = None,
        parents: list[list[int]] | None = None,
        features: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Commit `appends`, add speculative `nodes` (parent -1 = child of the last committed token);
        per row: logits for the last appended token (if any), then for each new node."""

    def forward_hidden(
        self,
        seq_ids: list[int],
        appends: list[list[int]],
        nodes: list[list[int]] | None = None,
        parents: list[list[int]] | None = None,
        features: list[torch.Tensor] | None = None,
        early_exit: EarlyExit | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`forward` plus, per row, the final hidden state of every new token (appends, then nodes)."""

    def commit(self, paths: dict[int, list[int]]) -> None:
        """Keep one root-first path of speculative nodes per sequence; drop the other nodes."""

    def clear_speculation(self, seq_id: int) -> None:
        """Drop every speculative node of the sequence."""


# ------------------------------------------------------------------------------------- the drafter's side
@dataclass
class OpenSpec:
    seq_id: int
    seed: int  # the drafter's own random stream (sampled chains)
    sampling: SamplingParams


@dataclass
class Report:
    """What the target committed for one sequence since its previous report, and the next draft's shape."""

    seq_id: int
    committed: list[int]  # new committed tokens; the last one is the root of the next draft
    accepted_nodes: list[int] = field(default_factory=list)  # accepted nodes of the previous draft
    features: torch.Tensor | None = None  # [n, H] target hidden states of newly known positions
    depth: int = 0
    topk: int = 1
    budget: int = 0
    branches: bool = False  # mirror: the next window is a chain whose branches are rolled out at early exit


@dataclass
class Proposal:
    tree: DraftTree
    reused: bool = False  # taken from a branch rolled out during the previous step


@dataclass
class ExitCandidates:
    """The target's early-exit top-kappa at each window position (row 0: after the root)."""

    seq_id: int
    ids: torch.Tensor  # [positions, kappa] token ids
    logprobs: torch.Tensor  # [positions, kappa]


class DraftService(Protocol):
    """The drafter as the scheduler sees it: in-process (orchestration/drafter_session.py) or across the gRPC
    speculation channel (orchestration/remote_drafter.py). Any call may raise: the scheduler then decodes
    without drafts and later calls `reset` and reopens its sequences."""

    uses_features: bool
    vocabulary: list[int] | None  # the only tokens the drafter can propose (None: the target's whole vocabulary)

    def open(self, specs: list[OpenSpec]) -> None: ...

    def release(self, seq_ids: list[int]) -> None: ...

    def propose(self, reports: list[Report], patience_s: float | None = None) -> dict[int, Proposal] | None:
        """The next drafts. A remote drafter that has not answered within `patience_s` gives none this time
        ({}: the target goes on without them; the late answer is dropped), and None (nothing sent, the reports
        stay pending) while that answer is outstanding. An in-process drafter always answers."""

    def early_exit(self, candidates: list[ExitCandidates]) -> None: ...

    def reset(self) -> None:
        """Forget every sequence (after a failure); the next calls start afresh."""
