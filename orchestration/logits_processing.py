"""The target's logits at every verified position -> the logits a token is chosen from.

Three request settings change them: the repetition penalty, the length penalty and min_new_tokens. Each is a
deterministic function of one position's logits and of that position's own context: the committed tokens, then
the draft path above it (in a tree, each node's ancestors only, never its siblings). A draft verified in one
forward therefore gets at every position exactly what `ar` would get there one token at a time, and speculation
stays lossless with them. Rows: row 0 chooses the token after the last committed one; row 1 + i the token after
draft node i.
"""

from __future__ import annotations

import torch

from mirrorspec.orchestration.draft_tree import ROOT, DraftTree
from mirrorspec.params import SamplingParams


def needs_processing(params: SamplingParams, generated: int) -> bool:
    return (params.repetition_penalty != 1.0 or params.length_penalty is not None
            or params.min_new_tokens > generated)


def process(logits: torch.Tensor, params: SamplingParams, context: list[int], generated: int, tree: DraftTree,
            eos_ids: set[int]) -> torch.Tensor:
    """`logits` [1 + len(tree), V] at the rows above; `context` the prompt and the tokens committed so far,
    `generated` how many of them are new. Returns new logits (the input is left as it is)."""
    logits = logits.float().clone()
    depths = torch.tensor([0] + [tree.depth(n) for n in range(len(tree))], device=logits.device)
    if params.repetition_penalty != 1.0:
        _repetition_penalty(logits, params.repetition_penalty, context, tree)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=logits.device)
    if not len(eos):
        return logits
    new_tokens = generated + depths  # [rows]: tokens generated before the one each row chooses
    if params.length_penalty is not None:
        _length_penalty(logits, params.length_penalty, new_tokens, eos)
    if params.min_new_tokens > generated:
        rows = (new_tokens < params.min_new_tokens).nonzero()[:, 0]
        logits[rows[:, None], eos[None]] = float("-inf")
    return logits


def _repetition_penalty(logits: torch.Tensor, penalty: float, context: list[int], tree: DraftTree) -> None:
    """CTRL's penalty (Keskar et al., arXiv 1909.05858; as transformers' and TGIS's repetition_penalty): a token
    that occurs in the row's context has its logit divided by `penalty` when positive, multiplied when negative."""
    seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)  # [rows, V]
    seen[:, torch.tensor(context, dtype=torch.long, device=logits.device)] = True
    rows, tokens = [], []
    for node in range(len(tree)):  # row 1 + node also sees the node itself and its ancestors
        ancestor = node
        while ancestor != ROOT:
            rows.append(1 + node)
            tokens.append(tree.tokens[ancestor])
            ancestor = tree.parents[ancestor]
    if rows:
        seen[torch.tensor(rows), torch.tensor(tokens)] = True
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    torch.where(seen, penalised, logits, out=logits)


def _length_penalty(logits: torch.Tensor, length_penalty: tuple[int, float], new_tokens: torch.Tensor,
                    eos: torch.Tensor) -> None:
    """Exponential decay length penalty (as transformers' and TGIS's): once `start` tokens are generated, EOS's
    logit grows by |logit| * (decay ** (generated - start) - 1)."""
    start, decay = length_penalty
    past = new_tokens - start  # [rows]
    rows = (past > 0).nonzero()[:, 0]
    if not len(rows):
        return
    # Powers in Python, one per row: a vector pow kernel may round differently from a single one, and every row
    # must get the bits `ar` gets at that position.
    factor = torch.tensor([decay ** k - 1.0 for k in past[rows].tolist()], device=logits.device)  # [r]
    current = logits[rows[:, None], eos[None]]  # [r, len(eos)]
    logits[rows[:, None], eos[None]] = current + current.abs() * factor[:, None]
