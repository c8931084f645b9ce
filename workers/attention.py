"""The attention function the engine's forwards use: PyTorch SDPA with native grouped-query attention.

transformers' own SDPA path repeats the K/V heads of GQA models whenever a mask is given (to stay on CUDA's
fused kernels), and the engine always gives a mask (token trees, padding, sliding windows). On CPU that copy is
the bulk of attention time (measured: batch 32, 400-token context, 9 query / 3 KV heads: 32 ms repeated vs 8 ms
with `enable_gqa`, bit-identical outputs), so CPU tensors take `enable_gqa=True`; other devices keep
transformers' function.

One query per row at half precision (every decode step) takes a different route on CPU: PyTorch's flash kernel
there is slow for it (measured, torch 2.13, bf16, 9 query / 3 KV heads, 300 keys: batch 64 9.1 ms, batch 8
1.1 ms) while two grouped matrix products over fp32 copies of the operands take 2.1 and 0.28 ms, with no larger
error against a float64 reference (bench/results/attention-decode-bf16.json). Several tokens per row keep SDPA,
which is as fast there, and so does fp32, where SDPA's kernel is not slow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "mirrorspec_sdpa"
HALF = (torch.bfloat16, torch.float16)
CHUNK_BYTES = 4 << 20


def engine_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
    if query.device.type != "cpu" or attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[2] == 1 and query.dtype in HALF and dropout == 0.0:
        out = grouped_decode_attention(query, key, value, attention_mask, scaling)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                             scale=scaling, enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def grouped_decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                             scaling: float | None) -> torch.Tensor:
    """Attention of one query per row, each KV head's query group as the rows of one fp32 product.

    query [B, Hq, 1, D]; key, value [B, Hkv, T, D]; mask [B, 1 or Hq, 1, T], bool (True = attend) or additive.
    Returns [B, Hq, 1, D] in the query's dtype. Scores and weights stay fp32, as in SDPA's CPU kernel. Rows go
    in chunks whose fp32 keys fit in CHUNK_BYTES: one copy of a whole large batch's keys cost up to 8x more
    than the same work in cache-sized pieces (measured: batch 128, 300 keys, 25 ms whole vs 3.3 ms)."""
    b, hq, _, d = query.shape
    hkv, t = key.shape[1], key.shape[2]
    scale = d ** -0.5 if scaling is None else scaling
    mask = mask.reshape(b, -1, 1, t).expand(b, hq, 1, t).reshape(b, hkv, hq // hkv, t)
    q = query.reshape(b, hkv, hq // hkv, d)
    out = torch.empty(b, hkv, hq // hkv, d, dtype=query.dtype)
    rows = max(1, CHUNK_BYTES // (hkv * t * d * 4))
    for r in range(0, b, rows):
        chunk = slice(r, r + rows)
        scores = torch.matmul(q[chunk].float(), key[chunk].float().transpose(-1, -2)).mul_(scale)  # [b, Hkv, g, T]
        if mask.dtype == torch.bool:
            # The float minimum, not -inf: a row with no visible key (padding) gets finite weights, not NaN.
            scores.masked_fill_(~mask[chunk], torch.finfo(torch.float32).min)
        else:
            scores.add_(mask[chunk])
        out[chunk] = torch.matmul(torch.softmax(scores, dim=-1), value[chunk].float())
    return out.reshape(b, hq, 1, d)


AttentionInterface.register(NAME, engine_sdpa)
# transformers' own forwards on the same model (e.g. `generate`) build SDPA-format masks for it.
AttentionMaskInterface.register(NAME, sdpa_mask)
