"""One decode step's attention on CPU: PyTorch SDPA against the engine's grouped fp32 form
(workers/attention.py `grouped_decode_attention`), time and largest error against a float64 reference, per
batch size and context length, with the default target's head layout (9 query heads over 3 KV heads, 64 wide).

    python -m mirrorspec.bench.attention_decode --dtype bfloat16 --threads 2 --name attention-decode-bf16

Writes OUT/NAME.json (OUT: bench/results).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mirrorspec.bench.harness import write_results
from mirrorspec.workers.attention import grouped_decode_attention

SHAPES = ((1, 300), (8, 300), (32, 100), (32, 1000), (64, 300), (128, 300), (64, 1500))  # (batch, keys)


def _ms(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def compare(dtype: torch.dtype, batch: int, keys: int, repeats: int, heads=(9, 3), width: int = 64) -> dict:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads[0], 1, width, generator=gen).to(dtype)
    k, v = (torch.randn(batch, heads[1], keys, width, generator=gen).to(dtype) for _ in range(2))
    mask = torch.rand(batch, 1, 1, keys, generator=gen) > 0.1
    reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, enable_gqa=True)
    kernels = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
               "grouped": lambda: grouped_decode_attention(q, k, v, mask, None)}
    row = {"batch": batch, "keys": keys}
    for name, fn in kernels.items():
        row[f"{name}_ms"] = round(_ms(fn, repeats), 4)
        row[f"{name}_max_error"] = float((fn().double() - reference).abs().max())
    row["speedup"] = round(row["sdpa_ms"] / row["grouped_ms"], 2)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [compare(getattr(torch, args.dtype), b, t, args.repeats) for b, t in SHAPES]
    result = {"dtype": args.dtype, "threads": args.threads, "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": rows}
    write_results(result, args.out, args.name)
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
