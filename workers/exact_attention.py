"""Attention that gives a token the same bits whether it is decoded alone, verified in a chain or a token tree, or
computed next to other sequences in a batch.

Fused kernels (PyTorch SDPA) choose their blocking from how many queries and keys a call has, and a tree puts a
node's ancestors at other cache columns than decoding puts the same tokens: both change the order of floating
point sums (bench/results/issue16-exactness-probe.md). Here each query's attention is one canonical computation
over its visible keys in position order (a tree node: the committed prefix, then its ancestors by depth):

  rank the visible keys 0..n-1; cut the ranks into blocks of BLOCK keys;
  s = q . k per key, in fp32, by one product of a fixed shape per (query head group, key block) pair, whatever
  the batch, the draft or the key count (_block_product);  m = max s (order-free);  e = exp(s - m), 0 past the
  last visible key;  per block, the e-weighted sum of v (again one fixed-shape product) and the sum of e, the
  blocks' partial sums added in block order; out = weighted sum / sum of weights.

Every product has the same shape whatever the batch, and blocks past a query's last key add exact zeros, so
the result depends only on the query and its visible keys (Flash-Decoding's split-K with fixed splits, and the
batch-invariant kernels of Thinking Machines' "Defeating nondeterminism in LLM inference", 2025, rest on the same
idea; this is a plain PyTorch version of it, not their code).
"""

from __future__ import annotations

import logging

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mirrorspec.workers import exact_attention_kernel
from mirrorspec.workers.exact_linear import CHECK_ROWS, LONG_ROWS, PROMPT_ROWS

logger = logging.getLogger(__name__)

NAME = "mirrorspec_exact"
BLOCK = 64


def exact_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor, dropout: float = 0.0, scaling: float | None = None,
                    softcap: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """`query` [B, H, T, d]; `key`, `value` [B, KV, V, d] (the cache view); `attention_mask` [B, 1, T, V] bool,
    True where a query may attend a key (sliding windows included). `softcap`: Gemma 2's logit soft-capping.
    Returns [B, T, H, d] as transformers' attention functions do.

    Prompt rows (prefill; exact_linear.PROMPT_ROWS) only need to be the same bits whatever else shares the
    forward, not the same as a decode step: each is attended alone by SDPA over exactly its own queries and keys
    (a shape that depends on the prompt alone), far cheaper than the canonical per-query form."""
    batch, queries = query.shape[0], query.shape[2]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    allowed = attention_mask[:, 0].to(key.device)  # [B, T, V]
    prompt = PROMPT_ROWS.get()
    if prompt is None or softcap or prompt.numel() != batch * queries:
        return _canonical(query, key, value, allowed, scale, softcap), None
    prompt = prompt.view(batch, queries)
    out = query.new_zeros(batch, queries, query.shape[1], query.shape[3])
    for row in prompt[:, 0].nonzero().flatten().tolist():
        count = int(prompt[row].sum())
        mask = allowed[row, :count]  # [n, V]
        width = int(mask.any(0).nonzero().max()) + 1  # up to the last key any of its queries sees
        attended = torch.nn.functional.scaled_dot_product_attention(
            query[row:row + 1, :, :count], key[row:row + 1, :, :width], value[row:row + 1, :, :width],
            attn_mask=mask[None, None, :, :width], scale=scale, enable_gqa=True)
        out[row, :count] = attended[0].transpose(0, 1)
    steps = ~prompt[:, 0]
    if bool(steps.any()):
        out[steps] = _canonical(query[steps], key[steps], value[steps], allowed[steps], scale, softcap)
    return out, None


def _kernel(device: torch.device | str) -> exact_attention_kernel.Kernel | None:
    """The compiled kernel where it serves `device` (CPU, and it builds here), else None: the PyTorch form."""
    return exact_attention_kernel.load() if torch.device(device).type == "cpu" else None


def step_form(device: str) -> str:
    """Which form computes the step queries' attention for a target on `device` in this process."""
    return "C kernel" if _kernel(device) is not None else "PyTorch form"


def _canonical(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor, scale: float,
               softcap: float | None) -> torch.Tensor:
    """Each query over its visible keys in the canonical blocked order (the module docstring): [B, T, H, d].
    On CPU, the compiled kernel's order instead (workers/exact_attention_kernel.py), where it builds."""
    kernel = _kernel(query.device) if query.shape[-1] == value.shape[-1] else None  # the kernel's one head size
    if kernel is not None:
        return kernel(query, key, value, allowed, scale, softcap)
    batch, heads, queries, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    counts = allowed.sum(-1)  # [B, T] visible keys per query
    blocks = max(1, -(-int(counts.max()) // BLOCK))
    width = blocks * BLOCK
    visible = torch.arange(width, device=key.device) < counts[..., None]  # [B, T, W]
    products = batch * kv_heads * queries * blocks  # one (query group, key block) pair each
    each = (batch, kv_heads, queries, blocks)
    # [B, KV, 1|T, W, d] -> per pair: keys [d, BLOCK] and values [BLOCK, d], fp32
    keys = _in_rank_order(key, allowed, counts, width).float().unflatten(3, (blocks, BLOCK)).transpose(-1, -2)
    keys = keys.expand(*each, dim, BLOCK).reshape(products, dim, BLOCK)
    values = _in_rank_order(value, allowed, counts, width).float().unflatten(3, (blocks, BLOCK))
    values = values.expand(*each, BLOCK, dim).reshape(products, BLOCK, dim)
    q = query.float().view(batch, kv_heads, group, queries, dim).transpose(2, 3)  # [B, KV, T, group, d]
    q = q[:, :, :, None].expand(*each, group, dim).reshape(products, group, dim)
    scores = _block_product(q, keys).view(*each, group, BLOCK) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    seen = visible.view(batch, 1, queries, blocks, 1, BLOCK)
    scores = scores.masked_fill(~seen, float("-inf"))
    top = scores.amax(dim=(3, 5), keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a query with no visible key (padding)
    weights = torch.exp(scores - top)  # 0 where not visible
    partial = _block_product(weights.reshape(products, group, BLOCK), values).view(*each, group, dim)
    norms = weights.sum(-1)  # [B, KV, T, blocks, g]
    total, norm = partial[:, :, :, 0], norms[:, :, :, 0]
    for b in range(1, blocks):  # block order, whatever the batch's longest row
        total, norm = total + partial[:, :, :, b], norm + norms[:, :, :, b]
    out = total / norm[..., None].clamp_min(torch.finfo(total.dtype).tiny)
    # [B, KV, T, g, d] -> [B, T, H, d]
    return out.permute(0, 2, 1, 3, 4).reshape(batch, queries, heads, dim).to(query.dtype)


def _block_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a` [n, m, k] @ `b` [n, k, p] (fp32), every one of the n products the same bits whatever n is:
    one batched product where this process's check found the BLAS so (a batched kernel runs each product of a
    shape alike on the CPU here: several times faster than the elementwise form for a draft of 16 tokens), else
    elementwise products summed along k, the same arithmetic for every product by construction."""
    if _batched_is_invariant(a.shape[1], a.shape[2], b.shape[2], a.device):
        # Contiguous, as the check ran: a BLAS takes another kernel for another layout (a view that skipped the
        # copy, when a query or a key block is alone in its dimension).
        return torch.bmm(a.contiguous(), b.contiguous())
    return (a[..., None] * b[:, None]).sum(-2)


# By (m, k, p, device): whether torch.bmm gives a product the same bits in a batch of any size (checked once).
_batched_checked: dict[tuple, bool] = {}


@torch.inference_mode()
def _batched_is_invariant(m: int, k: int, p: int, device: torch.device) -> bool:
    """Whether every product of a batch of N equals that product computed alone, for N = 1..CHECK_ROWS and
    LONG_ROWS (exact_linear's counts): a kernel chosen by batch size (split reductions, say) fails it."""
    key = (m, k, p, device)
    if key not in _batched_checked:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(LONG_ROWS, m, k, generator=generator).to(device)
        b = torch.randn(LONG_ROWS, k, p, generator=generator).to(device)
        alone = torch.cat([torch.bmm(a[i:i + 1], b[i:i + 1]) for i in range(LONG_ROWS)])
        counts = [*range(2, CHECK_ROWS + 1), LONG_ROWS]
        _batched_checked[key] = all(torch.equal(torch.bmm(a[:n], b[:n]), alone[:n]) for n in counts)
        logger.info("exact attention %s products on %s: %s", (m, k, p), device,
                    "batched" if _batched_checked[key] else "elementwise")
    return _batched_checked[key]


def _in_rank_order(tensor: torch.Tensor, allowed: torch.Tensor, counts: torch.Tensor, width: int) -> torch.Tensor:
    """Each query's visible keys (or values) in position order, padded to `width`: [B, KV, T, W, d], or
    [B, KV, 1, W, d] when every query sees columns 0..n-1 of its row (decoding, chains: one shared order, no copy
    per query). Padding entries are never weighted."""
    batch, kv_heads, columns, dim = tensor.shape
    if torch.equal(allowed, torch.arange(columns, device=allowed.device) < counts[..., None]):
        ranked = tensor[:, :, None, :width]
        return torch.nn.functional.pad(ranked, (0, 0, 0, width - ranked.shape[3]))
    # Visible columns first, in column order (= position order: a tree's ancestors come before their children).
    order = torch.argsort((~allowed).long() * columns + torch.arange(columns, device=allowed.device), dim=-1)
    if columns < width:
        order = torch.cat([order, order[..., :1].expand(*order.shape[:-1], width - columns)], dim=-1)
    rows = torch.arange(batch, device=allowed.device)[:, None, None]
    # [B, T, W, KV, d] -> [B, KV, T, W, d]
    return tensor.transpose(1, 2)[rows, order[..., :width]].permute(0, 3, 1, 2, 4)


AttentionInterface.register(NAME, exact_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
