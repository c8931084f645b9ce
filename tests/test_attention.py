"""The engine's CPU decode attention at half precision (workers/attention.py): the grouped fp32 form agrees with
a float64 reference as closely as PyTorch's SDPA does, takes bool and additive masks, gives a row with no visible
key finite values (padding rows must not turn into NaN), and agrees whether rows go in one chunk or many."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mirrorspec.workers import attention


def _inputs(batch: int, keys: int, dtype: torch.dtype, heads=(9, 3), width: int = 16):
    gen = torch.Generator().manual_seed(batch * 1000 + keys)
    q = torch.randn(batch, heads[0], 1, width, generator=gen).to(dtype)
    k, v = (torch.randn(batch, heads[1], keys, width, generator=gen).to(dtype) for _ in range(2))
    mask = torch.rand(batch, 1, 1, keys, generator=gen) > 0.3
    mask[:, :, :, 0] = True
    return q, k, v, mask


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_grouped_decode_matches_a_float64_reference_as_closely_as_sdpa(dtype):
    q, k, v, mask = _inputs(6, 37, dtype)
    reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, enable_gqa=True)
    ours = attention.grouped_decode_attention(q, k, v, mask, None)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert ours.dtype == dtype and ours.shape == q.shape
    assert (ours.double() - reference).abs().max() <= (sdpa.double() - reference).abs().max()
    additive = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(~mask, torch.finfo(torch.float32).min)
    assert torch.equal(attention.grouped_decode_attention(q, k, v, additive, None), ours)


def test_a_row_with_no_visible_key_stays_finite_and_leaves_the_others_alone():
    q, k, v, mask = _inputs(3, 9, torch.bfloat16)
    mask[1] = False
    k[1], v[1] = float("nan"), float("nan")  # a padding row's cache may hold anything
    out = attention.grouped_decode_attention(q, k, v, mask, None)
    alone = attention.grouped_decode_attention(q[[0, 2]], k[[0, 2]], v[[0, 2]], mask[[0, 2]], None)
    assert torch.isfinite(out[[0, 2]]).all() and torch.equal(out[[0, 2]], alone)
    k[1], v[1] = 0.0, 0.0
    assert torch.isfinite(attention.grouped_decode_attention(q, k, v, mask, None)).all()


def test_rows_in_many_chunks_agree_with_one_chunk(monkeypatch):
    q, k, v, mask = _inputs(11, 50, torch.bfloat16)
    whole = attention.grouped_decode_attention(q, k, v, mask, 0.3)
    monkeypatch.setattr(attention, "CHUNK_BYTES", 1)  # one row per chunk
    # Close, not bitwise: whether a batched product's bits depend on its batch size is the BLAS library's choice.
    torch.testing.assert_close(attention.grouped_decode_attention(q, k, v, mask, 0.3), whole)


def test_the_engine_routes_only_half_precision_decode_steps_to_it(monkeypatch):
    calls = []
    monkeypatch.setattr(attention, "grouped_decode_attention", lambda *a: calls.append(a[0].shape) or a[0])
    for dtype, tokens in ((torch.bfloat16, 1), (torch.bfloat16, 4), (torch.float32, 1)):
        q, k, v, mask = _inputs(2, 8, dtype)
        q = q.expand(-1, -1, tokens, -1)
        attention.engine_sdpa(torch.nn.Module(), q, k, v, mask.expand(-1, -1, tokens, -1))
    assert calls == [torch.Size([2, 9, 1, 16])]
