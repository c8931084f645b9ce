"""The optimised diffusion decoder (`low-confidence`, no cache) equals an independent reference of LLaDA's sampler.

The reference below is written from the paper (Nie et al., "Large Language Diffusion Models", arXiv 2502.09992,
section 2.4 and Appendix B: reverse process with low-confidence remasking and semi-autoregressive blocks), not
from any implementation: one sequence at a time, the whole canvas through the model at every step, plain loops.
- The canvas is the prompt followed by `gen_length` mask tokens, cut into blocks of `block_length`; blocks are
  decoded left to right and each gets steps / blocks steps.
- Linear schedule: a block with m masked positions commits m // s tokens at each of its s steps, and one more at
  each of the first m % s steps.
- At each step every masked position of the current block gets a prediction x0: the argmax of the logits, or,
  with temperature T > 0, the argmax of exp(logits) / (-log u)^T with u ~ U(0, 1) in float64 (Gumbel-max).
  Its confidence is the model's probability of x0 (softmax of the logits); the most confident predictions are
  committed, the others stay masked (they are "remasked"). Committed tokens never change.
- The mask token itself is not a prediction (a committed mask would stay masked for ever).
Randomness follows the engine's documented contract, so that seeded runs can be compared token for token: one
generator per request seeded with its `seed`; at each step, uniforms of shape [masked positions of the block in
canvas order, vocabulary] in float64.
"""

from __future__ import annotations

import random

import pytest
import torch
import transformers

from mirrorspec.orchestration.diffusion import DiffusionDecoder
from mirrorspec.params import DiffusionParams
from mirrorspec.workers.diffusion_model import DiffusionLM, DllmMeta

VOCAB = 48
MASK = VOCAB - 1


def tiny_llada(seed: int) -> DiffusionLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0)  # peaked distributions, as a trained model's are
    return DiffusionLM(model, DllmMeta(mask_token_id=MASK, shifted=False), own=True)


@torch.no_grad()
def llada_reference(model: torch.nn.Module, prompt: list[int], gen_length: int, block_length: int, steps: int,
                    temperature: float, seed: int) -> list[int]:
    canvas = torch.tensor(prompt + [MASK] * gen_length)
    length = len(canvas)
    generator = torch.Generator().manual_seed(seed)
    blocks = gen_length // block_length
    steps_per_block = steps // blocks
    for block in range(blocks):
        first = len(prompt) + block * block_length
        last = first + block_length
        masked_in_block = int((canvas[first:last] == MASK).sum())
        schedule = [masked_in_block // steps_per_block + (1 if s < masked_in_block % steps_per_block else 0)
                    for s in range(steps_per_block)]
        for commits in schedule:
            # Every position sees every other one (a masked diffusion model is bidirectional).
            logits = model(input_ids=canvas[None], attention_mask=torch.ones(1, 1, length, length, dtype=torch.bool),
                           position_ids=torch.arange(length)[None]).logits[0].float()
            logits[:, MASK] = float("-inf")
            positions = [i for i in range(first, last) if canvas[i] == MASK]
            chosen_logits = logits[positions]
            if temperature == 0:
                x0 = chosen_logits.argmax(-1)
            else:
                u = torch.rand(chosen_logits.shape, generator=generator, dtype=torch.float64)
                x0 = (chosen_logits.double().exp() / (-torch.log(u)) ** temperature).argmax(-1)
            probability = torch.softmax(chosen_logits, dim=-1).gather(-1, x0[:, None])[:, 0]
            confidence = torch.full((length,), float("-inf"))
            for k, position in enumerate(positions):
                confidence[position] = probability[k]
            for position in torch.topk(confidence, commits).indices.tolist():
                canvas[position] = x0[positions.index(position)]
    return canvas[len(prompt):].tolist()


@pytest.mark.parametrize("gen_length, block_length, steps", [(16, 16, 16), (16, 8, 8), (24, 8, 12), (12, 4, 6),
                                                             (20, 10, 4), (18, 9, 4)])
@pytest.mark.parametrize("temperature, seed", [(0.0, 0), (0.8, 3)], ids=["greedy", "seeded"])
def test_low_confidence_decoding_equals_the_reference(gen_length, block_length, steps, temperature, seed):
    model = tiny_llada(seed=5)
    rng = random.Random(gen_length * 100 + steps)
    prompts = [[rng.randrange(VOCAB - 1) for _ in range(rng.randint(2, 9))] for _ in range(3)]
    params = DiffusionParams("low-confidence", gen_length=gen_length, block_length=block_length, steps=steps,
                             temperature=temperature, seed=seed, stop_at_eos=False)
    outs = DiffusionDecoder(model).generate(prompts, params)  # the three prompts batched together
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == llada_reference(model.model, prompt, gen_length, block_length, steps, temperature,
                                                seed)
        assert out.forwards == steps  # one forward per step: the schedule commits every mask in time
