"""The one logits -> distribution transform (temperature, top-k, top-p) applied to target and drafter alike.

The output law of every method is the law of `ar` under this transform; speculation only changes speed.
"""

from __future__ import annotations

import numpy as np
import torch

from mirrorspec.params import SamplingParams

FLOAT32_MAX = torch.finfo(torch.float32).max
MT_WORDS, MT_WORDS_AT = 624, 24  # torch's CPU generator state: 8-byte seed, left, seeded, next; then 624 words


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Rows of `logits` [n, V] -> sampling distributions [n, V] (float32). Not for greedy requests."""
    # A temperature past float32's range would divide by inf (and a drafter's -inf logits become NaN); up there
    # the distribution is uniform over the allowed tokens either way.
    scaled = logits.float() / min(params.temperature, FLOAT32_MAX)
    if params.top_k and params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        # Keep the most likely tokens until their mass reaches top_p (the token that crosses it included).
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = mass_before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def log_probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Draft scores: log of the request's distribution (plain log-softmax for greedy requests)."""
    if params.greedy:
        return torch.log_softmax(logits.float(), dim=-1)
    return torch.log(probabilities(logits, params))


def seeded_generator(seed: int) -> torch.Generator:
    """A request's random stream, from its whole 64-bit seed. torch's CPU generator (mt19937) keeps only the low
    32 bits of a seed (0 and 2^32 would draw alike), so a larger seed fills the 624 state words itself, spread by
    numpy's SeedSequence; smaller seeds seed it as torch does, so their streams are torch's own."""
    generator = torch.Generator().manual_seed(seed & 0xFFFFFFFF)
    if seed >> 32:
        words = np.random.SeedSequence(seed).generate_state(MT_WORDS, dtype=np.uint32).astype("<u8")
        state = generator.get_state()
        state[MT_WORDS_AT : MT_WORDS_AT + 8 * MT_WORDS] = torch.from_numpy(words.view(np.uint8))
        generator.set_state(state)
    return generator


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


def uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))
