"""Adaptive speculation: how much of each row's draft the target verifies this step.

Glossary:
  node estimate   the chance the target accepts a drafted node once its parent is accepted: the drafter's own
                  probability of the token (a trained drafter's confidence tracks acceptance, EAGLE-2,
                  arXiv 2406.16858), or for a model-free draft the frequency its log-probability carries.
  path estimate   the chance the node is accepted with its whole path: the product of the node estimates from
                  the root. A node's expected contribution to the step's committed tokens is its path estimate.
  step cost       the target forward's relative cost at a token count (orchestration/step_cost.py).

The rule: a batched forward is padded, every row to the widest row's token count (the last committed token plus
its nodes), so the step costs cost(rows * (1 + width)) however the nodes are spread. Rank each adaptive row's nodes
by path estimate (a child never ranks before its parent) and verify each row's first `width` of them, with the
width chosen to maximise expected committed tokens per unit of the step's cost,
    (rows + fixed accepted + accepted(width)) / cost(rows * (1 + max(width, widest fixed row))),
where a width must beat plain decoding (width 0) by MIN_GAIN, more than the curve's own measurement error.
So a draft's unlikely tail is never verified (the stop rule: SpecDec++, arXiv 2405.19715, stops where acceptance
falls below a threshold; here the threshold follows from the cost curve), the likely branches of a tree are kept
wherever they are (EAGLE-2's ranking), nodes that fit in the padding of a wider row ride free, and as the batch
fills a machine whose forward cost grows with its tokens the width shrinks to nothing: plain decoding, never
slower than `ar` by the curve. (The first version ranked nodes across the whole batch and priced the step by its
real tokens, rows + nodes: at batch 8 it verified a few nodes on a few rows, each of which widened all 8 rows.)
Rows with adaptive speculation off (per request) and Mirror-SD windows (whose branches are rolled out for the
whole window) are verified whole and counted as fixed load. Pruning only chooses what to verify: every verified
node is still accepted by the exact rule, so outputs keep their law (and greedy ones their tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mirrorspec.orchestration.draft_tree import ROOT, DraftTree
from mirrorspec.orchestration.step_cost import StepCost


# Three probes in a row of the same target on a shared 2-core VM put 24 tokens at 1.32x to 1.73x the cost of 8,
# and the one-row probe (after 128 tokens) misses what a batch's longer contexts add: 8 rows of 3 tokens after
# 300 took 2.1x 8 rows of 1. Where a draft's predicted gain is thinner than that error, as at a full batch,
# verifying it is as likely to cost throughput as to add it, so it must promise more.
MIN_GAIN = 1.1


def path_estimates(tree: DraftTree) -> list[float]:
    """[len(tree)] each node's path estimate (nodes come in topological order)."""
    out: list[float] = []
    for parent, logprob in zip(tree.parents, tree.logprobs):
        node = math.exp(min(0.0, logprob))
        out.append(node if parent == ROOT else out[parent] * node)
    return out


@dataclass
class RowDraft:
    tree: DraftTree
    adaptive: bool  # False: verified whole (fixed load)


def plan(rows: list[RowDraft], cost: StepCost) -> list[list[int]]:
    """Per row, the nodes to verify (ascending, closed under parents): all of a fixed row's, the best `width` of
    each adaptive row's by the rule above."""
    fixed_width, fixed_accepted = 0, 0.0
    ranked: list[list[tuple[float, int, int]]] = []  # per adaptive row: (-path estimate, depth, node), best first
    for row in rows:
        estimates = path_estimates(row.tree)
        if not row.adaptive:
            fixed_width = max(fixed_width, len(row.tree))
            fixed_accepted += sum(estimates)
            ranked.append([])
            continue
        depths: list[int] = []
        for parent in row.tree.parents:
            depths.append(1 if parent == ROOT else depths[parent] + 1)
        # A child's estimate never exceeds its parent's and, on a tie, the shallower node comes first, so every
        # prefix of this order is closed under parents.
        ranked.append(sorted((-p, d, n) for n, (p, d) in enumerate(zip(estimates, depths))))
    best_width, best_rate, accepted = 0, -1.0, fixed_accepted
    for width in range(max(map(len, ranked), default=0) + 1):
        if width:  # each row's width-th likeliest node joins
            accepted -= sum(order[width - 1][0] for order in ranked if len(order) >= width)
        rate = (len(rows) + accepted) / cost(len(rows) * (1 + max(width, fixed_width)))
        if width == 0:
            rate *= MIN_GAIN  # the bar a draft must clear
        if rate > best_rate:
            best_width, best_rate = width, rate
    return [list(range(len(row.tree))) if not row.adaptive else sorted(n for _, _, n in order[:best_width])
            for row, order in zip(rows, ranked)]


def prune(tree: DraftTree, kept: list[int]) -> DraftTree:
    """The subtree of `kept` nodes (ascending, closed under parents), renumbered in the same order."""
    if len(kept) == len(tree):
        return tree
    new_index = {old: new for new, old in enumerate(kept)}
    return DraftTree(
        tokens=[tree.tokens[n] for n in kept],
        parents=[ROOT if tree.parents[n] == ROOT else new_index[tree.parents[n]] for n in kept],
        proposals=[tree.proposals[n] for n in kept],
        logprobs=[tree.logprobs[n] for n in kept],
    )
