"""The exact path's step attention on CPU as one small C function, compiled once per machine.

The canonical attention (workers/exact_attention.py) gives a query the same bits however it is batched; in
PyTorch it takes some 60 small operations per layer, most of a decode step's attention time and more of a
verify's (0.3 ms per layer decoding, 0.9 ms verifying 8 tokens after 300; SDPA: 0.2 and 0.1). Here each query is
one loop over its visible keys in position order, whose order of floating point operations is fixed by the code:
  s_j = q . k_j (16 lane sums over the head dimension, then halved pairwise), times the scale (soft-capped);
  m = max s;  e_j = exp(s_j - m);  out = (sum over j, in order, of e_j v_j) / (sum over j, in order, of e_j).
Nothing in it depends on the other queries, rows or sequences of the call, so the result is the same bits
decoded alone, verified in a chain or a tree, or batched. Compiled with `-ffp-contract=off` (no fused
multiply-adds: a vectorised loop and its scalar remainder round alike) and without `-ffast-math` (no
reassociation). The lanes vectorise; the function runs on one thread.

The C compiler (`$CC`, else `cc`) builds it at first use into the cache folder (`kernels/`, named by the source's
and flags' hash, so a changed kernel builds anew); without one, the PyTorch form is used (a warning says so).
The choice is made once per process, so every forward of an engine uses the same form.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import torch

from mirrorspec.workers.default_model import cache_dir

logger = logging.getLogger(__name__)

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 64  /* keys whose scores are summed at once (in registers) */

/* e^x for x <= 0 (Cephes' expf: x = n ln2 + r, a degree-6 polynomial in r, times 2^n), 0 below -87: plain
   arithmetic, so a vectorised loop and its scalar remainder give the same bits (a libm call would not vectorise,
   and its vector variant rounds otherwise). */
static inline float exp_nonpositive(float x) {
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)(x > -87.0f ? n : 0.0f) + 127) << 23;
    float power;
    memcpy(&power, &bits, sizeof power);
    return x > -87.0f ? p * power : 0.0f;
}

/* s[j] = q . k_j for j < n, k_j = column j of k_t [d, stride]: each key's sum over the head dimension in order. */
static void scores(const float *restrict q, const float *restrict k_t, int64_t stride, int64_t n, int64_t d,
                   float *restrict s) {
    int64_t j0 = 0;
    for (; j0 + CHUNK <= n; j0 += CHUNK) {
        float sum[CHUNK] = {0};
        for (int64_t i = 0; i < d; ++i)
            for (int j = 0; j < CHUNK; ++j) sum[j] += q[i] * k_t[i * stride + j0 + j];
        memcpy(s + j0, sum, sizeof sum);
    }
    if (j0 < n) {
        float sum[CHUNK] = {0};
        for (int64_t i = 0; i < d; ++i)
            for (int64_t j = 0; j < n - j0; ++j) sum[j] += q[i] * k_t[i * stride + j0 + j];
        memcpy(s + j0, sum, (n - j0) * sizeof(float));
    }
}

/* q [B, H, T, d]; k_t [B, KV, d, V] (keys transposed); v [B, KV, V, d]; allowed [B, T, V] (0 or 1);
   out [B, T, H, d]: contiguous float32. Returns 0, or 1 if scratch memory could not be had. */
int exact_attention(const float *q, const float *k_t, const float *v, const uint8_t *allowed, float *out,
                    int64_t B, int64_t H, int64_t KV, int64_t T, int64_t V, int64_t d, float scale,
                    float softcap) {
    int64_t group = H / KV, room = V ? V : 1;
    int64_t *cols = malloc(room * sizeof(int64_t));
    float *s = malloc(room * sizeof(float));
    float *gathered = malloc(room * d * sizeof(float));
    float *acc = malloc(d * sizeof(float));
    if (!cols || !s || !gathered || !acc) {
        free(cols); free(s); free(gathered); free(acc);
        return 1;
    }
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t t = 0; t < T; ++t) {
            const uint8_t *row = allowed + (b * T + t) * V;
            int64_t n = 0;
            for (int64_t c = 0; c < V; ++c)  /* visible columns in column order = position order */
                if (row[c]) cols[n++] = c;
            int prefix = n == 0 || cols[n - 1] == n - 1;  /* columns 0..n-1: read the keys in place */
            for (int64_t kv = 0; kv < KV; ++kv) {
                const float *keys = k_t + (b * KV + kv) * d * V, *values = v + (b * KV + kv) * V * d;
                int64_t stride = V;
                if (!prefix) {  /* a tree node: its visible keys side by side */
                    for (int64_t i = 0; i < d; ++i)
                        for (int64_t j = 0; j < n; ++j) gathered[i * n + j] = keys[i * V + cols[j]];
                    keys = gathered;
                    stride = n;
                }
                for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
                    float *restrict o = out + ((b * T + t) * H + h) * d;
                    if (n == 0) {  /* a padding query */
                        memset(o, 0, d * sizeof(float));
                        continue;
                    }
                    scores(q + ((b * H + h) * T + t) * d, keys, stride, n, d, s);
                    for (int64_t j = 0; j < n; ++j) s[j] *= scale;
                    if (softcap > 0)
                        for (int64_t j = 0; j < n; ++j) s[j] = tanhf(s[j] / softcap) * softcap;
                    float top = s[0];  /* the maximum: the same whatever the order it is taken in */
                    for (int64_t j = 1; j < n; ++j) top = s[j] > top ? s[j] : top;
                    for (int64_t j = 0; j < n; ++j) s[j] = exp_nonpositive(s[j] - top);
                    float norm = 0;
                    memset(acc, 0, d * sizeof(float));
                    for (int64_t j = 0; j < n; ++j) {  /* in position order */
                        const float e = s[j];
                        const float *restrict vj = values + cols[j] * d;
                        norm += e;
                        for (int64_t i = 0; i < d; ++i) acc[i] += e * vj[i];
                    }
                    for (int64_t i = 0; i < d; ++i) o[i] = acc[i] / norm;
                }
            }
        }
    }
    free(cols); free(s); free(gathered); free(acc);
    return 0;
}
"""


def _isa_flags() -> list[str]:
    """Vector instructions for the lanes, by what PyTorch found this CPU has (its own kernels' dispatch)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    return {"AVX512": ["-march=x86-64-v4"], "AVX2": ["-march=x86-64-v3"]}.get(
        torch.backends.cpu.get_cpu_capability(), [])


def _flags() -> list[str]:
    return ["-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-trapping-math", "-fno-fast-math", *_isa_flags()]


def _build() -> Path:
    compiler = os.environ.get("CC", "cc")
    digest = hashlib.sha256("\0".join([SOURCE, compiler, *_flags()]).encode()).hexdigest()[:16]
    library = cache_dir() / "kernels" / f"exact_attention-{digest}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        source = Path(scratch) / "exact_attention.c"
        source.write_text(SOURCE)
        built = Path(scratch) / library.name
        subprocess.run([compiler, *_flags(), "-o", str(built), str(source), "-lm"], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(built, library)  # atomic: a concurrent build leaves one whole file
    return library


Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float | None], torch.Tensor]


@functools.cache
def load() -> Kernel | None:
    """The compiled kernel (built at first use), or None where it cannot be built or loaded here."""
    try:
        function = ctypes.CDLL(str(_build())).exact_attention
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or error
        logger.warning("exact attention: no C kernel (%s); using the PyTorch form, slower", detail)
        return None
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 6 + [ctypes.c_float] * 2
    logger.info("exact attention: C kernel %s", function)

    def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor, scale: float,
               softcap: float | None) -> torch.Tensor:
        """`query` [B, H, T, d]; `key`, `value` [B, KV, V, d]; `allowed` [B, T, V] bool -> [B, T, H, d]."""
        batch, heads, queries, dim = query.shape
        q = query.float().contiguous()
        k_t, v = key.float().transpose(-1, -2).contiguous(), value.float().contiguous()
        mask = allowed.to(torch.uint8).contiguous()
        out = torch.empty(batch, queries, heads, dim)
        failed = function(q.data_ptr(), k_t.data_ptr(), v.data_ptr(), mask.data_ptr(), out.data_ptr(), batch, heads,
                          key.shape[1], queries, key.shape[2], dim, scale, softcap or 0.0)
        if failed:
            raise MemoryError("exact attention: no memory for the kernel's scratch space")
        return out.to(query.dtype)
    return attend
