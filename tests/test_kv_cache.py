"""The KV cache against recomputation: after any append / tree / commit / rollback / release sequence, the
next-token logits equal a from-scratch transformers forward over the committed tokens (fp32, |diff| <= 1e-4)."""

import random

import pytest
import torch

from helpers import FAMILIES, reference_logits, tiny_model, worker

TOL = 1e-4


def random_tree(rng: random.Random, size: int, vocab: int) -> tuple[list[int], list[int]]:
    tokens = [rng.randrange(vocab) for _ in range(size)]
    parents = [rng.randrange(-1, i) if i else -1 for i in range(size)]
    return tokens, parents


def path_to(node: int, parents: list[int]) -> list[int]:
    path = []
    while node != -1:
        path.append(node)
        node = parents[node]
    return path[::-1]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_random_operations_match_recompute(family):
    vocab = 50
    loaded = tiny_model(family, vocab)
    w = worker(loaded, slots=4, capacity=96, spec=16)
    rng = random.Random(family)
    committed: dict[int, list[int]] = {}  # seq -> tokens in the worker's cache
    next_id = 0

    def open_seq():
        nonlocal next_id
        seq, next_id = next_id, next_id + 1
        w.open(seq)
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 20))]
        (out,) = w.forward([seq], [prompt])
        assert (out[0] - reference_logits(loaded, prompt)).abs().max() <= TOL
        committed[seq] = prompt

    for _ in range(3):
        open_seq()
    for _ in range(40):
        op = rng.choice(["tree", "tree", "rollback", "release", "append"])
        seqs = sorted(committed)
        if op == "release" and len(seqs) > 1:
            gone = rng.choice(seqs)
            w.release(gone)
            del committed[gone]
            open_seq()
        elif op == "rollback":
            seq = rng.choice(seqs)
            n = rng.randint(0, len(committed[seq]) - 1)
            w.rollback(seq, n)
            committed[seq] = committed[seq][: len(committed[seq]) - n]
        elif op == "append":
            seq = rng.choice(seqs)
            extra = [rng.randrange(vocab) for _ in range(rng.randint(1, 4))]
            (out,) = w.forward([seq], [extra])
            committed[seq] += extra
            assert (out[0] - reference_logits(loaded, committed[seq])).abs().max() <= TOL
        elif op == "tree" and all(len(committed[s]) < 60 for s in seqs):
            # A batch of rows: a pending token plus a random tree each, in one forward.
            rows = rng.sample(seqs, rng.randint(1, len(seqs)))
            pending = {s: rng.randrange(vocab) for s in rows}
            trees = {s: random_tree(rng, rng.randint(0, 10), vocab) for s in rows}
            outs = w.forward(rows, [[pending[s]] for s in rows], [trees[s][0] for s in rows],
                             [trees[s][1] for s in rows])
            paths = {}
            for s, out in zip(rows, outs):
                tokens, parents = trees[s]
                base = committed[s] + [pending[s]]
                assert (out[0] - reference_logits(loaded, base)).abs().max() <= TOL
                for node in range(len(tokens)):
                    ids = base + [tokens[n] for n in path_to(node, parents)]
                    assert (out[1 + node] - reference_logits(loaded, ids)).abs().max() <= TOL, (family, node)
                keep = path_to(rng.randrange(len(tokens)), parents) if tokens else []
                keep = keep[: rng.randint(0, len(keep))]
                paths[s] = keep
                committed[s] = base + [tokens[n] for n in keep]
            w.commit(paths)
        # Every live sequence's next-token logits still match recomputation.
        probe = {s: rng.randrange(vocab) for s in sorted(committed)}
        outs = w.forward(sorted(committed), [[probe[s]] for s in sorted(committed)])
        for s, out in zip(sorted(committed), outs):
            committed[s].append(probe[s])
            assert (out[0] - reference_logits(loaded, committed[s])).abs().max() <= TOL, (family, op)


def test_drafter_style_expansion_across_forwards():
    """Spec nodes added over several forwards (a drafter expanding level by level) see their ancestors only."""
    loaded = tiny_model("llama", 40)
    w = worker(loaded, slots=2, capacity=64, spec=16)
    w.open(7)
    prompt = [3, 5, 7, 9]
    w.forward([7], [prompt])
    (lvl1,) = w.forward([7], [[]], [[11, 12]], [[-1, -1]])
    (lvl2,) = w.forward([7], [[]], [[13, 14]], [[1, 0]])
    assert (lvl1[0] - reference_logits(loaded, prompt + [11])).abs().max() <= TOL
    assert (lvl2[0] - reference_logits(loaded, prompt + [12, 13])).abs().max() <= TOL
    assert (lvl2[1] - reference_logits(loaded, prompt + [11, 14])).abs().max() <= TOL
    w.commit({7: [1, 2]})  # keep 12 -> 13
    assert w.length(7) == 6
    (out,) = w.forward([7], [[21]])
    assert (out[0] - reference_logits(loaded, prompt + [12, 13, 21])).abs().max() <= TOL


def test_invalid_operations_are_refused():
    w = worker(tiny_model("llama", 40), slots=1, capacity=16, spec=4)
    w.open(1)
    with pytest.raises(RuntimeError, match="KV slots"):
        w.open(2)
    with pytest.raises(ValueError, match="capacity"):
        w.forward([1], [list(range(17))])
    w.forward([1], [[1, 2]], [[3, 4]], [[-1, -1]])
    with pytest.raises(ValueError, match="chain"):
        w.commit({1: [0, 1]})  # siblings are not a path
    with pytest.raises(ValueError, match="speculation is pending"):
        w.forward([1], [[5]])
    with pytest.raises(ValueError, match="parent"):
        w.forward([1], [[]], [[5]], [[7]])
    with pytest.raises(ValueError, match="speculative nodes"):
        w.forward([1], [[]], [[5, 6, 7]], [[-1, -1, -1]])
