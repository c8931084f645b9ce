"""The attention function the engine's forwards use: PyTorch SDPA with native grouped-query attention.

transformers' own SDPA path repeats the K/V heads of GQA models whenever a mask is given (to stay on CUDA's
fused kernels), and the engine always gives a mask (token trees, padding, sliding windows). On CPU that copy is
the bulk of attention time (measured: batch 32, 400-token context, 9 query / 3 KV heads: 32 ms repeated vs 8 ms
with `enable_gqa`, bit-identical outputs), so CPU tensors take `enable_gqa=True`; other devices keep
transformers' function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "mirrorspec_sdpa"


def engine_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
    if query.device.type != "cpu" or attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, engine_sdpa)
# transformers' own forwards on the same model (e.g. `generate`) build SDPA-format masks for it.
AttentionMaskInterface.register(NAME, sdpa_mask)
