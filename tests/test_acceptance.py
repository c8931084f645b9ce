"""Unit tests of the acceptance rules on hand-made trees and distributions."""

import torch

from mirrorspec.orchestration.acceptance import verify_greedy, verify_sampling
from mirrorspec.orchestration.draft_tree import DraftTree


def tree(tokens, parents, proposals=None):
    return DraftTree(tokens, parents, proposals or [None] * len(tokens))


def test_greedy_follows_the_matching_branch_then_adds_the_bonus():
    # root -> {5, 6}; 6 -> {7}; 7 -> {8}
    t = tree([5, 6, 7, 8], [-1, -1, 1, 2])
    # argmax per output row: root, node0, node1, node2, node3
    v = verify_greedy(t, [6, 0, 7, 9, 0])
    assert v.path == [1, 2] and v.next_token == 9


def test_greedy_rejects_at_the_root():
    v = verify_greedy(tree([5], [-1]), [4, 1])
    assert v.path == [] and v.next_token == 4


def test_empty_tree_is_plain_decoding():
    assert verify_greedy(DraftTree(), [3]).next_token == 3


def test_deterministic_child_with_target_certainty_is_always_accepted():
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        v = verify_sampling(tree([1], [-1]), probs, g)
        assert v.path == [0]


def test_rejected_deterministic_children_are_never_resampled():
    # p = (0.5, 0.5, 0) with tokens 0 and 1 drafted as siblings: after 0 is rejected the residual is a point mass
    # on 1, so one of the two is always accepted and token 2 (no target mass) never appears.
    probs = torch.tensor([[0.5, 0.5, 0.0], [1, 0, 0], [1, 0, 0]], dtype=torch.float)
    g = torch.Generator().manual_seed(1)
    outcomes = {verify_sampling(tree([0, 1], [-1, -1]), probs, g).path[0] for _ in range(200)}
    assert outcomes == {0, 1}


def test_sampled_chain_uses_the_residual_after_a_rejection():
    # q proposes token 0 with certainty; p = (0.25, 0.75): accept 0 w.p. 0.25, else the residual is a point mass on 1.
    p = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    q = torch.tensor([1.0, 0.0])
    g = torch.Generator().manual_seed(2)
    first = []
    for _ in range(4000):
        v = verify_sampling(tree([0], [-1], [q]), p, g)
        first.append(0 if v.path else v.next_token)
    share = first.count(0) / len(first)
    assert abs(share - 0.25) < 0.03 and set(first) == {0, 1}
