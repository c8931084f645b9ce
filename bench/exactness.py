"""Bitwise-exactness probes of a target worker: the logits of the same tokens decoded alone, in a batch, verified
as chains and as a tree path, compared with torch.equal (tests/test_exact.py, bench/device_check.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Probe:
    prompts: list[list[int]]  # one per sequence, of different lengths
    continuations: list[list[int]]  # the tokens fed after each prompt, all of one length
    vocab_size: int

    def feed(self, seq: int) -> list[int]:
        return [self.prompts[seq][-1]] + self.continuations[seq]


def _prefill(worker, probe: Probe, seqs: list[int]) -> None:
    """All but the last prompt token, the sequences in one forward (as the engine prefills joining prompts)."""
    for seq in seqs:
        worker.open(seq)
    worker.forward(seqs, [probe.prompts[s][:-1] for s in seqs])


def decoded(worker, probe: Probe, seqs: list[int]) -> dict[int, torch.Tensor]:
    """Each sequence's logits [steps, V] after each fed token, the sequences decoded together one token a step."""
    _prefill(worker, probe, seqs)
    rows = {s: [] for s in seqs}
    for step in range(len(probe.feed(seqs[0]))):
        for seq, logits in zip(seqs, worker.forward(seqs, [[probe.feed(s)[step]] for s in seqs])):
            rows[seq].append(logits[0])
    for seq in seqs:
        worker.release(seq)
    return {s: torch.stack(v) for s, v in rows.items()}


def verified_in_chains(worker, probe: Probe, seq: int, k: int) -> torch.Tensor:
    """The same tokens verified k at a time: the last committed token plus a chain draft of k - 1, all accepted."""
    _prefill(worker, probe, [seq])
    feed, rows = probe.feed(seq), []
    for start in range(0, len(feed), k):
        block = feed[start:start + k]
        rows += worker.forward([seq], [block[:1]], [block[1:]], [list(range(-1, len(block) - 2))])[0]
        worker.commit({seq: list(range(len(block) - 1))})
    worker.release(seq)
    return torch.stack(rows)


def verified_in_a_tree(worker, probe: Probe, seq: int, depth: int = 4) -> torch.Tensor:
    """The continuation's first `depth` tokens as a tree path; at each level two wrong siblings come first, so
    the path's nodes sit at other cache columns than decoding puts them."""
    _prefill(worker, probe, [seq])
    nodes, parents, path, parent = [], [], [], -1
    for token in probe.continuations[seq][:depth]:
        for wrong in ((token + 1) % probe.vocab_size, (token + 2) % probe.vocab_size):
            nodes.append(wrong)
            parents.append(parent)
        nodes.append(token)
        parents.append(parent)
        parent = len(nodes) - 1
        path.append(parent)
    logits = worker.forward([seq], [[probe.prompts[seq][-1]]], [nodes], [parents])[0]
    worker.release(seq)
    return logits[[0] + [1 + node for node in path]]


def same_bits(worker, probe: Probe) -> dict[str, bool]:
    """Per check, whether the logits equal those of each sequence decoded alone (sequences 0, 1, 2)."""
    alone = {s: decoded(worker, probe, [s])[s] for s in range(3)}
    together = decoded(worker, probe, [0, 1, 2])
    checks = {f"batch row {s}": torch.equal(together[s], alone[s]) for s in range(3)}
    checks.update({f"chain {k}": torch.equal(verified_in_chains(worker, probe, 1, k), alone[1]) for k in (2, 4, 8)})
    checks["tree path"] = torch.equal(verified_in_a_tree(worker, probe, 2), alone[2][:5])
    return checks
