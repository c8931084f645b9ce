"""A faster fp32 `nn.Linear` for the few-token forwards of speculative decoding on CPU.

Speculation only pays if scoring k tokens costs about as much as scoring one. On this project's CPUs (AMD EPYC,
PyTorch's MKL) `F.linear` with 2-16 rows takes 2-3x the time of one row, while the same product written as
`W @ x^T` runs at close to one-row cost (measured: SmolLM2's 576x12288 block, 8 rows: 9.5 ms vs 4.3 ms; one row
padded to two: 2.3 ms vs 3.7 ms). Kernel choice depends on the CPU and BLAS, so `auto` times both on the model's
own largest weight at load and switches only when the gain is clear. Results are the same matmul up to float
rounding order; the lossless tests run with whichever path is active.
"""

from __future__ import annotations

import logging
import time
import types

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Above this many rows the BLAS's own layout is as fast or faster (measured crossover: 128-256 rows).
MAX_ROWS = 128
MODES = ("auto", "on", "off")


def _transposed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if rows > MAX_ROWS:
        return nn.functional.linear(x, self.weight, self.bias)
    flat = x.reshape(rows, x.shape[-1])
    if rows == 1:  # the single-row path is the slow one; a copied second row is cheaper (a stride-0 view is not)
        flat = torch.cat([flat, flat])
    out = (self.weight @ flat.t()).t()[:rows].contiguous()
    if self.bias is not None:
        out = out + self.bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _time(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def transposed_is_faster(weight: torch.Tensor) -> bool:
    """Time stock and transposed products on a real weight at 1 and 6 rows (decode and verify sizes)."""
    stock = transposed = 0.0
    for rows in (1, 6):
        x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
        padded = torch.cat([x, x]) if rows == 1 else x
        stock += _time(lambda: nn.functional.linear(x, weight))
        transposed += _time(lambda: (weight @ padded.t()).t().contiguous())
    logger.info("cpu linear: stock %.2f ms, transposed %.2f ms", stock * 1e3, transposed * 1e3)
    return transposed < 0.8 * stock


def apply(model: nn.Module, mode: str = "auto") -> bool:
    """Switch every fp32 CPU linear of `model` to the transposed product when `mode` says so; return whether it did."""
    if mode not in MODES:
        raise ValueError(f"cpu_linear must be one of {MODES}, got {mode!r}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)
               and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]
    if mode == "off" or not linears:
        return False
    if mode == "auto":
        with torch.inference_mode():
            if not transposed_is_faster(max((m.weight for m in linears), key=lambda w: w.numel())):
                return False
    for module in linears:
        module.forward = types.MethodType(_transposed_forward, module)
    return True
