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
  native            F.linear as is: free where the BLAS is row-invariant already (bf16 through oneDNN on AVX-512
                    without AMX; with AMX, oneDNN rounds rows otherwise from 33 rows on);
  4-row multiples   F.linear on rows padded to a multiple of 4, up to 64 at a time (MKL fp32 and oneDNN bf16
                    without AMX give a row the same bits in any such product, for most shapes);
  transposed, wide  W @ X^T on rows padded to a multiple of 4, up to 64 at a time (oneDNN bf16 with AMX);
  transposed 4      the same, up to 8 at a time (MKL fp32 gives a row the same bits in a product of 4 or 8 rows,
                    not of 1, 2-3 or 5-7): a decode step pays a 4-row product, about 1.3x the one-row one (see
                    workers/cpu_linear.py), and a chain of 3 drafts is free;
  transposed 2      the same in tiles of 2 rows (2 and 3 share bits): decoding pays nothing, a k-token verify k/2;
  one row           F.linear a row at a time: the same kernel for every row by construction, the last resort.
A tiled kernel is checked on every product it can run (up to its chunk and a tile past it); native, which runs any
count, at 1..CHECK_ROWS and LONG_COUNTS. Every row of every product is compared. The choice is made per thread
count (a BLAS blocks otherwise on another). Prompt tokens (prefill) take a kernel of their own, for long products
(a prompt token is always computed as one, whatever shares its forward). The order is fixed, not timed, so that
every engine on a machine picks the same.
"""

from __future__ import annotations

import logging
import types
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Rows the load-time check runs products of: 1..CHECK_ROWS at least (a tiled kernel: its whole chunk and a tile
# past it, checked_rows), and for a kernel that takes any count at once, LONG_COUNTS: either side of the block
# edges where a BLAS switches kernels (oneDNN's AMX bf16 products round rows otherwise from 33 rows on), up to
# LONG_ROWS.
CHECK_ROWS = 17
LONG_ROWS = 300
LONG_COUNTS = (24, 32, 33, 48, 64, 65, 96, 128, 129, 192, 256, 257, LONG_ROWS)
# Distinct random rows of the check's weight (cancelling_operands).
PROBE_ROWS = 2048
# Rows a step kernel multiplies at once at most: a verify or a batch of up to 64 rows is one product (oneDNN's
# bf16 576x1536 product gives a row the same bits in any multiple of 4 rows on AVX-512 without AMX, and two
# products of 16 + 8 rows cost 1.8x one of 24; with AMX, a 24-row transposed LM head product costs 2.6 ms in one
# product, 9.2 in three of 8).
STEP_CHUNK = 64
# Rows a prompt kernel multiplies at once at most (prefill: long products pay).
PROMPT_CHUNK = 256


@dataclass(frozen=True)
class TileKernel:
    """Rows padded (with zeros) to a multiple of `multiple`, then multiplied `chunk` rows at a time."""
    name: str
    multiple: int  # 0 = native: the input as it comes
    chunk: int
    transposed: bool  # W @ X^T instead of X @ W^T

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """`x` [N, in] -> [N, out]."""
        x = x.contiguous()  # the layout the load-time check multiplied: a BLAS takes another path for another one
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
# product of a few rows is the faster, in half precision (oneDNN without AMX) the stock one (576x1536 bf16 on an
# AVX-512 machine: 1 row 0.089 ms stock-padded vs 0.125 transposed, 32 rows 0.25 vs 0.45).
_NATIVE = TileKernel("native", 0, 0, False)
_MULTIPLES_4 = TileKernel("4-row multiples", 4, STEP_CHUNK, False)
_TRANSPOSED_WIDE = TileKernel("transposed, wide", 4, STEP_CHUNK, True)
_TRANSPOSED_4 = TileKernel("transposed 4", 4, 8, True)
_TRANSPOSED_2 = TileKernel("transposed 2", 2, 2, True)
_ONE_ROW = TileKernel("one row", 1, 1, False)
STEP_KERNELS = {
    torch.float32: (_NATIVE, _TRANSPOSED_WIDE, _TRANSPOSED_4, _TRANSPOSED_2, _MULTIPLES_4, _ONE_ROW),
    "half": (_NATIVE, _MULTIPLES_4, _TRANSPOSED_WIDE, _TRANSPOSED_4, _TRANSPOSED_2, _ONE_ROW),
}
# Prompt rows (prefill: many rows at once); a prompt token is always computed by this kernel, whatever else
# shares its forward, so it needs invariance only among prompt rows: long products first, then the step kernels
# (each keeps a row's bits in any product it runs).
_LONG_PROMPT = (
    _NATIVE,
    TileKernel("4-row multiples, long", 4, PROMPT_CHUNK, False),
    TileKernel("transposed, long", 4, PROMPT_CHUNK // 2, True),
)


def step_kernels(dtype: torch.dtype) -> tuple[TileKernel, ...]:
    return STEP_KERNELS.get(dtype, STEP_KERNELS["half"])


def prompt_kernels(dtype: torch.dtype) -> tuple[TileKernel, ...]:
    return _LONG_PROMPT + tuple(kernel for kernel in step_kernels(dtype) if kernel not in _LONG_PROMPT)


# Per forward, the flattened [B * T] mask of rows that are prompt tokens (None: none); set by the model worker
# around its decoder call (workers/model_worker.py), so that the same modules serve drafters sharing them.
PROMPT_ROWS: ContextVar[torch.Tensor | None] = ContextVar("prompt_rows", default=None)


@torch.inference_mode()
def is_row_invariant(kernel: TileKernel, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether every row of an N-row product of `x` [rows, in] and `weight` equals that row computed alone, for
    N up to `checked_rows` (past CHECK_ROWS, the multiples of the kernel's padding: a count between two runs
    the same product as the next multiple, a row's bits depending on the product's shape, not on its other
    rows), and for a kernel that takes any count at once (native), for N in LONG_COUNTS up to the rows of `x`
    (LONG_ROWS from `choose`; the operands are `cancelling_operands`)."""
    top = checked_rows(kernel)
    counts = [*range(2, CHECK_ROWS + 1), *range(CHECK_ROWS + 1, top + 1, kernel.multiple or 1),
              *(() if kernel.chunk else (n for n in LONG_COUNTS if top < n <= x.shape[0]))]
    alone = x.new_empty(counts[-1], weight.shape[0])  # rows computed alone, as far as the counts so far need
    done = 0
    for count in counts:
        for row in range(done, count):
            alone[row] = kernel(x[row:row + 1], weight, bias)[0]
        done = count
        if not torch.equal(kernel(x[:count], weight, bias), alone[:count]):
            return False
    return True


def cancelling_operands(weight: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight of `weight`'s shape, dtype and layout, and `rows` inputs, whose products cancel: in every output
    the second half of the terms negates the first, so a result is what rounding left in the order the kernel
    summed, and a kernel that sums in another order for some row counts changes (almost) every output, even
    rounded to half precision. With random operands, oneDNN's AMX bf16 products passed the check for some weights
    and failed it for others (the rounding to bf16 hid most differences)."""
    generator = torch.Generator().manual_seed(0)
    half = weight.shape[1] // 2
    # Random rows, repeated past PROBE_ROWS (an LM head's 49k would cost a quarter second to draw).
    probe = torch.randn(min(weight.shape[0], PROBE_ROWS), weight.shape[1], generator=generator)
    probe = probe.repeat(-(-weight.shape[0] // probe.shape[0]), 1)[:weight.shape[0]]
    probe[:, half:2 * half] = -probe[:, :half]
    # Terms of many magnitudes (log-normal scales), so that partial sums round at many places.
    x = torch.randn(rows, weight.shape[1], generator=generator) * torch.randn(rows, weight.shape[1],
                                                                              generator=generator).mul(2).exp()
    x[:, half:2 * half] = x[:, :half]
    laid_out = torch.empty_strided(weight.shape, weight.stride(), dtype=weight.dtype, device=weight.device)
    return laid_out.copy_(probe), x.to(weight.device, weight.dtype)


def checked_rows(kernel: TileKernel) -> int:
    """1..this many rows are checked one count at a time: at least CHECK_ROWS, and a tiled kernel's whole chunk
    with a tile past it (every product it can run: a longer input is split into those)."""
    return max(CHECK_ROWS, kernel.chunk + kernel.multiple)


# Kernels chosen so far in this process, by (candidates, weight shape, dtype, device, bias, threads): a second
# engine (or replica) on the same weights' shapes pays no check, and picks what the first did. The thread count
# is part of the key: a BLAS blocks otherwise on another count (MKL fp32 576x576 here: products of 4-row
# multiples keep a row's bits on 2 threads, not on 1).
_chosen: dict[tuple, TileKernel] = {}


def choose(kernels: tuple[TileKernel, ...], weight: torch.Tensor, bias: torch.Tensor | None) -> TileKernel:
    key = (kernels, tuple(weight.shape), weight.dtype, weight.device, bias is not None, torch.get_num_threads())
    if key not in _chosen:
        probe_weight, x = cancelling_operands(weight, max(LONG_ROWS, *map(checked_rows, kernels)))
        kernel = next((kernel for kernel in kernels if is_row_invariant(kernel, probe_weight, x, bias)), None)
        if kernel is None:  # even one row at a time differs between calls: the BLAS is not deterministic here
            raise RuntimeError(f"exact: no linear kernel gives the same bits twice for a {tuple(weight.shape)} "
                               f"{weight.dtype} weight on {weight.device}")
        logger.info("exact linear %s %s, %d threads: %s", tuple(weight.shape), weight.dtype, key[-1], kernel.name)
        _chosen[key] = kernel
    return _chosen[key]


def _kernel(module: nn.Linear, rows: str) -> TileKernel:
    """`module`'s kernel for "step" or "prompt" rows at this thread count (chosen once per count)."""
    key = (rows, torch.get_num_threads())
    kernel = module.exact_kernels.get(key)
    if kernel is None:
        kernels = (step_kernels if rows == "step" else prompt_kernels)(module.weight.dtype)
        kernel = module.exact_kernels[key] = choose(kernels, module.weight, module.bias)
    return kernel


def _tiled_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    prompt = PROMPT_ROWS.get()
    if prompt is None or prompt.numel() != flat.shape[0]:
        out = _kernel(self, "step")(flat, self.weight, self.bias)
    else:  # prompt rows and step rows each by their own kernel (the prompts' chosen at the first prefill)
        out = flat.new_empty(flat.shape[0], self.weight.shape[0])
        out[prompt] = _kernel(self, "prompt")(flat[prompt], self.weight, self.bias)
        if not bool(prompt.all()):
            out[~prompt] = _kernel(self, "step")(flat[~prompt], self.weight, self.bias)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def apply(model: nn.Module) -> None:
    """Give every nn.Linear of `model` row-invariant kernels: for steps chosen now, for prompts at the first
    prefill (an LM head never sees one), each again at the first forward on another thread count."""
    for module in (m for m in model.modules() if isinstance(m, nn.Linear)):
        module.exact_kernels = {}
        _kernel(module, "step")
        module.forward = types.MethodType(_tiled_forward, module)
