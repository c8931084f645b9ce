"""Linear layers whose every output row is the same bits however many rows a forward carries.

A BLAS picks its kernel from the matrix shape: on this project's CPU an fp32 product of one row runs a GEMV and
of two or more rows a GEMM, and their rounding differs (bench/results/issue16-exactness-probe.md). So a token's
activations would depend on how many tokens share its forward: one (decoding) or many (verifying a draft,
batching). Here every product runs in tiles of exactly TILE_ROWS rows (the last one zero-padded): each row is
always computed by the same kernel on the same shape, so decode, verify and batch give the same bits. Rows are
independent in a matrix product, so a row's result does not depend on the other rows of its tile.
"""

from __future__ import annotations

import types

import torch
from torch import nn

TILE_ROWS = 8  # a decode step pads 1 row to 8; a draft of up to 7 tokens plus its root fills one tile


def _tiled_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.shape[0]
    pad = (-rows) % TILE_ROWS
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad, flat.shape[1])])
    tiles = [nn.functional.linear(tile, self.weight, self.bias) for tile in flat.split(TILE_ROWS)]
    out = torch.cat(tiles)[:rows]
    return out.reshape(*x.shape[:-1], out.shape[-1])


def apply(model: nn.Module) -> int:
    """Switch every nn.Linear of `model` to fixed row tiles; returns how many were switched."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for module in linears:
        module.forward = types.MethodType(_tiled_forward, module)
    return len(linears)
