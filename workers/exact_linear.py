"""Linear layers whose every output row is the same bits however many rows a forward carries.

A BLAS picks its kernel from the matrix shape: on this project's CPU an fp32 product of one row runs a GEMV, of
two or three rows one GEMM kernel and of four or more another, and their rounding differs
(bench/results/issue16-exactness-probe.md). So a token's activations would depend on how many tokens share its
forward: one (decoding) or many (verifying a draft, batching). A row stays the same bits if every product that
computes it has the same shape, so each linear runs its rows in fixed tiles (the last one zero-padded; rows are
independent in a matrix product, so a row's result does not depend on the other rows of its tile).

Which kernel keeps rows invariant, and which is fastest, depends on the CPU, the BLAS and the dtype, so `apply`
checks the candidates on each distinct weight shape at load, in a fixed order per dtype (fastest first where
measured: STEP_KERNELS), and keeps the first whose rows are the same bits for every row count it tries:
  native          F.linear as is: free where the BLAS is row-invariant already (bf16 through oneDNN here);
  transposed 4    W @ X^T on rows padded to a multiple of 4, up to 8 at a time (MKL fp32 gives a row the same
                  bits in a product of 4 or 8 rows, not of 1, 2-3 or 5-7): a decode step pays a 4-row product,
                  about 1.3x the one-row one here (see workers/cpu_linear.py), and a chain of 3 drafts is free;
  transposed 2    the same in tiles of 2 rows (2 and 3 share bits): decoding pays nothing, a k-token verify k/2;
  4-row multiples F.linear on rows padded to a multiple of 4 (MKL gives a row the same bits in any such product);
  one row         F.linear a row at a time: the same kernel for every row by construction, the last resort.
Prompt tokens (prefill) take a kernel of their own, for long products (a prompt token is always computed as one,
whatever shares its forward). The order is fixed, not timed, so that every engine on a machine picks the same.
"""

from __future__ import annotations

import logging
import types
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Rows the load-time check runs products of: 1..CHECK_ROWS at least (tiles at every position, a partial last tile;
# a step kernel's whole chunk: checked_rows), and LONG_ROWS (past a prompt kernel's chunk).
CHECK_ROWS = 17
LONG_ROWS = 300
# Rows a step kernel multiplies at once at most: a verify or a batch of up to 64 rows is one product (oneDNN's
# bf16 576x1536 product gives a row the same bits in any multiple of 4 rows here, and two products of 16 + 8 rows
# cost 1.8x one of 24).
STEP_CHUNK = 64


@dataclass(frozen=True)
class TileKernel:
    """Rows padded (with zeros) to a multiple of `multiple`, then multiplied `chunk` rows at a time."""
    name: str
    multiple: int  # 0 = native: the input as it comes
    chunk: int
    transposed: bool  # W @ X^T instead of X @ W^T

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """`x` [N, in] -> [N, out]."""
        if not self.multiple:
            return nn.functional.linear(x, weight, bias)
        count = x.shape[0]
        pad = (-count) % self.multiple
        if pad:
            x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
        if self.transposed:
            tiles = [(weight @ tile.t()).t() for tile in x.split(self.chunk)]
        else:
            tiles = [nn.functional.linear(tile, weight) for tile in x.split(self.chunk)]
        out = torch.cat(tiles)[:count]
        return out + bias if bias is not None else out


# Step rows (decode, verify: a few rows per sequence), fastest first where measured: in fp32 (MKL) the transposed
# product of a few rows is the faster, in half precision (oneDNN) the stock one (576x1536 bf16 on the AVX-512
# machine: 1 row 0.089 ms stock-padded vs 0.125 transposed, 32 rows 0.25 vs 0.45).
_NATIVE = TileKernel("native", 0, 0, False)
_TRANSPOSED_4 = TileKernel("transposed, 4-row multiples", 4, 8, True)
_TRANSPOSED_2 = TileKernel("transposed, 2-row tiles", 2, 2, True)
_MULTIPLES_4 = TileKernel("4-row multiples", 4, STEP_CHUNK, False)
_ONE_ROW = TileKernel("one row", 1, 1, False)
STEP_KERNELS = {
    torch.float32: (_NATIVE, _TRANSPOSED_4, _TRANSPOSED_2, _MULTIPLES_4, _ONE_ROW),
    "half": (_NATIVE, _MULTIPLES_4, _TRANSPOSED_4, _TRANSPOSED_2, _ONE_ROW),
}
# Prompt rows (prefill: many rows at once); a prompt token is always computed by this kernel, whatever else
# shares its forward, so it needs invariance only among prompt rows.
PROMPT_KERNELS = (
    TileKernel("native", 0, 0, False),
    TileKernel("4-row multiples", 4, 256, False),
    TileKernel("one row", 1, 1, False),
)
# Per forward, the flattened [B * T] mask of rows that are prompt tokens (None: none); set by the model worker
# around its decoder call (workers/model_worker.py), so that the same modules serve drafters sharing them.
PROMPT_ROWS: ContextVar[torch.Tensor | None] = ContextVar("prompt_rows", default=None)


@torch.inference_mode()
def is_row_invariant(kernel: TileKernel, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether every row of an N-row product equals that row computed alone, for every N up to `checked_rows`
    (a step kernel's whole chunk and a partial tile past it), and, for a kernel that takes more rows at once than
    that, for those rows at the head of a LONG_ROWS-row product."""
    top = checked_rows(kernel)
    long = not kernel.chunk or kernel.chunk > top
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(LONG_ROWS if long else top, weight.shape[1], generator=generator)
    x = x.to(weight.device, weight.dtype)
    alone = torch.cat([kernel(x[row:row + 1], weight, bias) for row in range(top)])
    counts = [*range(2, top + 1), *([LONG_ROWS] if long else [])]
    return all(torch.equal(kernel(x[:count], weight, bias)[:top], alone[:count]) for count in counts)


def checked_rows(kernel: TileKernel) -> int:
    """1..this many rows are checked one count at a time: at least CHECK_ROWS (tiles at every position, a partial
    last tile), and a step chunk longer than that whole, with a tile past it."""
    return max(CHECK_ROWS, min(kernel.chunk, STEP_CHUNK) + kernel.multiple)


# Kernels chosen so far in this process, by (candidates, weight shape, dtype, device, bias): a second engine (or
# replica) on the same weights' shapes pays no check, and picks what the first did.
_chosen: dict[tuple, TileKernel] = {}


def choose(kernels: tuple[TileKernel, ...], weight: torch.Tensor, bias: torch.Tensor | None) -> TileKernel:
    key = (kernels, tuple(weight.shape), weight.dtype, weight.device, bias is not None)
    if key not in _chosen:
        kernel = next((kernel for kernel in kernels if is_row_invariant(kernel, weight, bias)), None)
        if kernel is None:  # even one row at a time differs between calls: the BLAS is not deterministic here
            raise RuntimeError(f"exact: no linear kernel gives the same bits twice for a {tuple(weight.shape)} "
                               f"{weight.dtype} weight on {weight.device}")
        logger.info("exact linear %s %s: %s", tuple(weight.shape), weight.dtype, kernel.name)
        _chosen[key] = kernel
    return _chosen[key]


def _tiled_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    prompt = PROMPT_ROWS.get()
    if prompt is None or prompt.numel() != flat.shape[0]:
        out = self.step_kernel(flat, self.weight, self.bias)
    else:  # prompt rows and step rows each by their own kernel (the prompts' chosen at the first prefill)
        out = flat.new_empty(flat.shape[0], self.weight.shape[0])
        out[prompt] = choose(PROMPT_KERNELS, self.weight, self.bias)(flat[prompt], self.weight, self.bias)
        if not bool(prompt.all()):
            out[~prompt] = self.step_kernel(flat[~prompt], self.weight, self.bias)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def apply(model: nn.Module) -> None:
    """Give every nn.Linear of `model` row-invariant kernels: for steps chosen now, for prompts at the first
    prefill (an LM head never sees one)."""
    for module in (m for m in model.modules() if isinstance(m, nn.Linear)):
        kernels = STEP_KERNELS.get(module.weight.dtype, STEP_KERNELS["half"])
        module.step_kernel = choose(kernels, module.weight, module.bias)
        module.forward = types.MethodType(_tiled_forward, module)
