"""The small interface orchestration uses to talk to a model worker (in-process object or, later, a Ray actor)."""

from __future__ import annotations

from typing import Protocol

import torch


class Worker(Protocol):
    vocab_size: int
    uses_features: bool  # a feature drafter: each fed token comes with a hidden state (see drafting.py)

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
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`forward` plus, per row, the final hidden state of every new token (appends, then nodes)."""

    def commit(self, paths: dict[int, list[int]]) -> None:
        """Keep one root-first path of speculative nodes per sequence; drop the other nodes."""

    def clear_speculation(self, seq_id: int) -> None:
        """Drop every speculative node of the sequence."""
