"""Log-probabilities of committed tokens, as the target computes them.

They are the target model's own (log-softmax of its raw logits, before penalties, temperature, top-k and top-p:
vLLM's default `raw_logprobs`), taken from the verify forward's row that chose each token, never the drafter's.
On the exact path (engine.exact) those rows hold the bits `ar` computes, so every method reports the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    rank: int  # 1 = the target's most likely token; tied tokens share a rank
    top: tuple[tuple[int, float], ...]  # the n most likely (token id, logprob), best first


def token_logprobs(logits: torch.Tensor, tokens: list[int], top_n: int) -> list[TokenLogprob]:
    """`logits` [len(tokens), V]: the row that chose each token."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [k, V]
    index = torch.tensor(tokens, dtype=torch.long, device=logp.device)
    chosen = logp.gather(1, index[:, None])  # [k, 1]
    ranks = (logp > chosen).sum(dim=-1) + 1  # [k]
    top_values, top_ids = torch.topk(logp, top_n, dim=-1) if top_n else (logp[:, :0], logp[:, :0].long())
    return [TokenLogprob(token, float(value), int(rank), tuple(zip(ids, values)))
            for token, value, rank, ids, values in zip(tokens, chosen[:, 0].tolist(), ranks.tolist(),
                                                        top_ids.tolist(), top_values.tolist())]
