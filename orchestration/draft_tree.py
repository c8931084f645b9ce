"""A drafted token tree: nodes in topological order, each with its parent (a chain has one child per node)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

ROOT = -1


@dataclass
class DraftTree:
    """Drafted nodes in topological order; the root (the last committed token) is implicit, index -1."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    # Distribution each node was sampled from, or None for a deterministic (top-k) node.
    proposals: list[torch.Tensor | None] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # draft log-probability of each node given its parent

    def __len__(self) -> int:
        return len(self.tokens)

    def children(self) -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {ROOT: []}
        for node, parent in enumerate(self.parents):
            kids.setdefault(parent, []).append(node)
        return kids

    def depth(self, node: int) -> int:
        d = 0
        while node != ROOT:
            node = self.parents[node]
            d += 1
        return d


def merge(base: DraftTree, extra: DraftTree, max_nodes: int) -> DraftTree:
    """`base` with the nodes of `extra` it lacks (same token under the same parent: one node), up to `max_nodes`
    in all; base's nodes keep their indices, so the added ones come after them. Added nodes are deterministic."""
    merged = DraftTree(list(base.tokens), list(base.parents), list(base.proposals), list(base.logprobs))
    child = {(parent, token): node for node, (parent, token) in enumerate(zip(base.parents, base.tokens))}
    placed: dict[int, int] = {}  # extra's node -> merged node
    for node, (parent, token) in enumerate(zip(extra.parents, extra.tokens)):
        if parent != ROOT and parent not in placed:
            continue  # its parent was left out
        key = (ROOT if parent == ROOT else placed[parent], token)
        if key not in child:
            if len(merged) >= max_nodes:
                continue
            child[key] = len(merged)
            merged.tokens.append(token)
            merged.parents.append(key[0])
            merged.proposals.append(None)
            merged.logprobs.append(extra.logprobs[node])
        placed[node] = child[key]
    return merged
