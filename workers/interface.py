"""What a model worker offers the decoding core: the `Worker` calls, and Mirror-SD's `EarlyExit` request.

Implemented by workers/model_worker.py (one process), workers/drafter_model.py (a trained drafter) and
workers/tensor_parallel.py (a tensor-parallel group in lockstep); the decoding core (orchestration/) calls only these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch


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
    feature_layers: tuple[int, ...]  # a feature drafter: the target layers it reads besides the final state
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

    def set_output_layers(self, layers: tuple[int, ...]) -> None:
        """Make forward_hidden return, before each final state, the (normed) states after these layers."""

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, H] final hidden states (as forward_hidden returns them) -> [T, V] logits."""

    def commit(self, paths: dict[int, list[int]]) -> None:
        """Keep one root-first path of speculative nodes per sequence; drop the other nodes."""

    def clear_speculation(self, seq_id: int) -> None:
        """Drop every speculative node of the sequence."""
