"""Lossless acceptance of a drafted token tree (a chain is a tree with one child per node).

Greedy: follow the child whose token is the target's argmax, then add the target's argmax (bonus/correction).

Sampling: the recursive rejection rule of SpecInfer (arXiv 2305.09781, Alg. 2) and EAGLE's deterministic
variant, in one form. At node u with target distribution P and children c_1..c_k (in draft order), child c_s
proposed with distribution Q_s is accepted with probability min(1, P(x_s) / Q_s(x_s)); on rejection
P <- norm(max(0, P - Q_s)) and the next child is tried. If none is accepted, the next token is drawn from the
residual P. A deterministic child (top-k expansion) has Q_s = point mass on x_s, which gives EAGLE's rule:
accept with probability P(x_s), else zero P(x_s) and renormalise. A sampled chain child has Q_s = the drafter's
distribution, which is standard speculative sampling (Leviathan et al., arXiv 2211.17192). Every committed token
is then distributed exactly as the target's (transformed) distribution given the committed prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mirrorspec.orchestration.draft_tree import ROOT, DraftTree
from mirrorspec.orchestration.sampling import sample, uniform

@dataclass
class Verdict:
    path: list[int]  # accepted node indices, root's child first
    next_token: int  # the correction (after a rejection) or bonus (after a fully accepted path) token


def _row(node: int) -> int:
    """Row of the target's outputs for a node: row 0 is the root, row 1 + i is node i."""
    return node + 1


def verify_greedy(tree: DraftTree, argmax: list[int]) -> Verdict:
    """`argmax[r]`: the target's argmax at output row r (root first)."""
    kids = tree.children()
    node, path = ROOT, []
    while True:
        want = argmax[_row(node)]
        match = next((c for c in kids.get(node, ()) if tree.tokens[c] == want), None)
        if match is None:
            return Verdict(path, want)
        path.append(match)
        node = match


def verify_sampling(tree: DraftTree, target_probs: torch.Tensor, generator: torch.Generator) -> Verdict:
    """`target_probs` [1 + len(tree), V]: the target's transformed distribution at the root and at each node."""
    kids = tree.children()
    node, path = ROOT, []
    while True:
        residual = target_probs[_row(node)]
        accepted = None
        for child in kids.get(node, ()):
            token, proposal = tree.tokens[child], tree.proposals[child]
            q = 1.0 if proposal is None else float(proposal[token])
            p = float(residual[token])
            if q > 0.0 and uniform(generator) * q < p:  # u < p / q, without dividing
                accepted = child
                break
            updated = residual_after_rejection(residual, token, proposal)
            if updated is None:
                # Only possible when P <= Q everywhere, i.e. P == Q: then the child above is accepted with
                # probability 1 and this line is unreachable except through rounding; fall back to P.
                residual = target_probs[_row(node)]
                break
            residual = updated
        if accepted is None:
            return Verdict(path, sample(residual, generator))
        path.append(accepted)
        node = accepted


def residual_after_rejection(residual: torch.Tensor, token: int, proposal: torch.Tensor | None) -> torch.Tensor | None:
    """norm(max(0, P - Q)) once the child that proposed `token` from Q was rejected (a deterministic child's Q is
    the point mass on `token`: zero it and renormalise); None when nothing is left."""
    if proposal is None:
        residual = residual.clone()
        residual[token] = 0.0
    else:
        residual = torch.clamp(residual - proposal, min=0.0)
    total = float(residual.sum())
    return residual / total if total > 0.0 else None
