"""The exact path's step attention on CPU as one small C function, compiled once per machine.

The canonical attention (workers/exact_attention.py) gives a query the same bits however it is batched; in
PyTorch it takes some 60 small operations per layer, most of a decode step's attention time and more of a
verify's (0.3 ms per layer decoding, 0.9 ms verifying 8 tokens after 300; SDPA: 0.2 and 0.1). Here each query is
one loop over its visible keys in position order, whose order of floating point operations is fixed by the code:
  s_j = q . k_j (summed over the head dimension in order), times the scale (soft-capped);  m = max s;
  e_j = exp(s_j - m) (its own exp: plain arithmetic);  out = (sum over j, in order, of e_j v_j) / (sum of e_j in
  order).
Vectors of 16 lanes hold 16 keys' scores or 16 of the head's columns: each lane does what scalar code would.
Nothing in it depends on the other queries, rows or sequences of the call, so the result is the same bits
decoded alone, verified in a chain or a tree, or batched. Compiled with `-ffp-contract=off` (no fused
multiply-adds: vector lanes and scalar remainders round alike) and without `-ffast-math` (no reassociation). The
queries are shared among PyTorch's intra-op threads (OpenMP); which thread computes a query changes no bit.
The query heads of one key head are summed together (each value row read once for up to four of them), the exp
runs 16 lanes at a time, and the last keys' scores take one vector pass: on one core of an AMX Xeon, 9 heads
over 3 key heads, 24 queries after 160 keys take 0.24 ms (0.47 before these three changes).

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
#ifdef _OPENMP
#include <omp.h>
#endif

/* 16 lanes (GCC/Clang vector extensions: each lane's operations are IEEE single precision as in scalar code);
   loads and stores need no alignment. */
typedef float vec __attribute__((vector_size(64), aligned(4)));
typedef int32_t mask __attribute__((vector_size(64), aligned(4)));

/* e^x for x <= 0, in each lane (Cephes' expf: x = n ln2 + r, a degree-6 polynomial in r, times 2^n), 0 below -87:
   plain arithmetic, each lane's the same as scalar code's (a libm call would not vectorise, and its vector
   variant rounds otherwise). floor(t) is the truncation, one less where that rounded up. */
static inline vec exp_nonpositive(vec x) {
    const mask live = x > -87.0f;
    x = (vec)((mask)x & live);  /* dead lanes (also NaN) compute e^0, then give 0 */
    const vec t = x * 1.44269504088896341f + 0.5f;
    vec n = __builtin_convertvector(__builtin_convertvector(t, mask), vec);
    n += __builtin_convertvector(n > t, vec);
    vec r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vec p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const vec power = (vec)((__builtin_convertvector(n, mask) + 127) << 23);
    return (vec)((mask)(p * power) & live);
}

/* The largest of s[0..n-1], n >= 1: the same whatever the order it is taken in, so 16 lanes at a time. */
static float maximum(const float *restrict s, int64_t n) {
    vec top = {0};
    for (int l = 0; l < 16; ++l) top[l] = s[0];
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const vec x = *(const vec *)(s + j);
        const mask larger = x > top;
        top = (vec)(((mask)x & larger) | ((mask)top & ~larger));
    }
    float best = top[0];
    for (int l = 1; l < 16; ++l) best = top[l] > best ? top[l] : best;
    for (; j < n; ++j) best = s[j] > best ? s[j] : best;
    return best;
}

/* bfloat16 -> float32: the 16 bits are the float's high half (exact, as torch's .float()). */
typedef uint16_t bf16s __attribute__((vector_size(32), aligned(2)));
typedef uint32_t words __attribute__((vector_size(64)));
static inline vec widen(const uint16_t *p) {
    bf16s h;
    memcpy(&h, p, sizeof h);
    words w = __builtin_convertvector(h, words) << 16;
    vec f;
    memcpy(&f, &w, sizeof f);
    return f;
}
static inline float widen_one(uint16_t h) {
    uint32_t w = (uint32_t)h << 16;
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}
static inline vec load(const float *p) { return *(const vec *)p; }
static inline float load_one(float x) { return x; }

/* For heads h < g (g <= HEADS_AT_ONCE) of one key head: o_h[i] = sum over j < n, in order, of e_h[j] * (row
   cols[j] of values)[i], with e_h = e + h * e_stride and o_h = o + h * d. 64 columns at a time in four vectors per
   head (kept in registers over the keys; each value row is read once for the g heads), the rest one column at a
   time: the same operations per column either way, and per head whatever g is. The values are read where they
   lie: float32 or bfloat16 rows of d. */
#define HEADS_AT_ONCE 4
#define WEIGHTED_SUM(NAME, TYPE, LOAD, LOAD_ONE)                                                              \
static void NAME(const float *restrict e, int64_t e_stride, int g, const TYPE *restrict values,               \
                 const int64_t *restrict cols, int64_t n, int64_t d, float *restrict o) {                    \
    int64_t i0 = 0;                                                                                           \
    for (; i0 + 64 <= d; i0 += 64) {                                                                          \
        vec a[HEADS_AT_ONCE][4] = {{{0}}};                                                                    \
        for (int64_t j = 0; j < n; ++j) {                                                                     \
            const TYPE *row = values + cols[j] * d + i0;                                                      \
            const vec r0 = LOAD(row), r1 = LOAD(row + 16), r2 = LOAD(row + 32), r3 = LOAD(row + 48);          \
            _Pragma("GCC unroll 4")                                                                           \
            for (int h = 0; h < HEADS_AT_ONCE; ++h)                                                           \
                if (h < g) {                                                                                  \
                    const float w = e[h * e_stride + j];                                                      \
                    a[h][0] += w * r0;                                                                        \
                    a[h][1] += w * r1;                                                                        \
                    a[h][2] += w * r2;                                                                        \
                    a[h][3] += w * r3;                                                                        \
                }                                                                                             \
        }                                                                                                     \
        for (int h = 0; h < g; ++h)                                                                           \
            for (int l = 0; l < 4; ++l) *(vec *)(o + h * d + i0 + 16 * l) = a[h][l];                          \
    }                                                                                                         \
    for (; i0 < d; ++i0)                                                                                      \
        for (int h = 0; h < g; ++h) {                                                                         \
            float acc = 0;                                                                                    \
            for (int64_t j = 0; j < n; ++j) acc += e[h * e_stride + j] * LOAD_ONE(values[cols[j] * d + i0]);  \
            o[h * d + i0] = acc;                                                                              \
        }                                                                                                     \
}
WEIGHTED_SUM(weighted_sum_float, float, load, load_one)
WEIGHTED_SUM(weighted_sum_bf16, uint16_t, widen, widen_one)

/* s[j] = q . k_j for j < n, k_j = column j of k_t [d, stride]: each key's sum over the head dimension in order,
   in a vector lane (64 keys at a time in four vectors, then the rest in up to four more: the same operations per key
   either way). */
static void scores(const float *restrict q, const float *restrict k_t, int64_t stride, int64_t n, int64_t d,
                   float *restrict s) {
    int64_t j0 = 0;
    for (; j0 + 64 <= n; j0 += 64) {
        vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int64_t i = 0; i < d; ++i) {
            const float *row = k_t + i * stride + j0;
            const float w = q[i];
            a0 += w * *(const vec *)row;
            a1 += w * *(const vec *)(row + 16);
            a2 += w * *(const vec *)(row + 32);
            a3 += w * *(const vec *)(row + 48);
        }
        *(vec *)(s + j0) = a0;
        *(vec *)(s + j0 + 16) = a1;
        *(vec *)(s + j0 + 32) = a2;
        *(vec *)(s + j0 + 48) = a3;
    }
    if (j0 < n) {  /* then the last 1-4 vectors in one pass (the stride leaves room for their lanes) */
        const int64_t left = (n - j0 + 15) / 16;
        vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int64_t i = 0; i < d; ++i) {
            const float *row = k_t + i * stride + j0;
            const float w = q[i];
            a0 += w * *(const vec *)row;
            if (left > 1) a1 += w * *(const vec *)(row + 16);
            if (left > 2) a2 += w * *(const vec *)(row + 32);
            if (left > 3) a3 += w * *(const vec *)(row + 48);
        }
        const vec last[4] = {a0, a1, a2, a3};
        memcpy(s + j0, last, (n - j0) * sizeof(float));
    }
}

#ifdef __clang__
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (mask){__VA_ARGS__})
#endif

/* Rows a and a + s of every 2s-row block of a 16x16 tile swap their off-diagonal s x s blocks (a takes b's lanes
   j - s where j & s, b takes a's lanes j + s where not): s = 8, 4, 2, 1 in turn transposes the tile. Lane indices
   16..31 are b's. */
#define FIRST_8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define SECOND_8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define FIRST_4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define SECOND_4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define FIRST_2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define SECOND_2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define FIRST_1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define SECOND_1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
#define SWAP_BLOCKS(r, s, FIRST, SECOND)                                                                      \
    for (int a = 0; a < 16; ++a)                                                                              \
        if (!(a & s)) {                                                                                       \
            const vec a_ = r[a], b_ = r[a + s];                                                               \
            r[a] = SHUFFLE(a_, b_, FIRST);                                                                    \
            r[a + s] = SHUFFLE(a_, b_, SECOND);                                                               \
        }
static inline void transpose_tile(vec r[16]) {
    SWAP_BLOCKS(r, 8, FIRST_8, SECOND_8)
    SWAP_BLOCKS(r, 4, FIRST_4, SECOND_4)
    SWAP_BLOCKS(r, 2, FIRST_2, SECOND_2)
    SWAP_BLOCKS(r, 1, FIRST_1, SECOND_1)
}

/* The head's keys (group kv of row b) as float32 columns [d, padded], the columns past V zero (the last
   lanes'): tiles of 16 keys x 16 dimensions transposed in registers, the rest one value at a time. */
static inline float key_value(const uint16_t *k16, const float *k32, int bf16, int64_t index) {
    return bf16 ? widen_one(k16[index]) : k32[index];
}
static void transpose_keys(const void *k, int bf16, int64_t at, int64_t V, int64_t d, int64_t padded,
                           float *restrict k_t) {
    const uint16_t *k16 = (const uint16_t *)k + at;
    const float *k32 = (const float *)k + at;
    int64_t c0 = 0;
    for (; c0 + 16 <= V; c0 += 16) {
        int64_t i0 = 0;
        for (; i0 + 16 <= d; i0 += 16) {
            vec r[16];
            for (int l = 0; l < 16; ++l)
                r[l] = bf16 ? widen(k16 + (c0 + l) * d + i0) : load(k32 + (c0 + l) * d + i0);
            transpose_tile(r);
            for (int i = 0; i < 16; ++i) *(vec *)(k_t + (i0 + i) * padded + c0) = r[i];
        }
        for (; i0 < d; ++i0)
            for (int64_t c = c0; c < c0 + 16; ++c) k_t[i0 * padded + c] = key_value(k16, k32, bf16, c * d + i0);
    }
    for (int64_t c = c0; c < V; ++c)
        for (int64_t i = 0; i < d; ++i) k_t[i * padded + c] = key_value(k16, k32, bf16, c * d + i);
    for (int64_t i = 0; i < d; ++i)
        for (int64_t c = V; c < padded; ++c) k_t[i * padded + c] = 0;
}

/* Where part i of a thread's scratch begins: parts[0..i-1] before it, each rounded up to 64 bytes. */
static size_t part(const size_t sizes[4], int i) {
    size_t at = 0;
    for (int p = 0; p < i; ++p) at += (sizes[p] + 63) / 64 * 64;
    return at;
}

/* The calling thread's scratch space for parts of `sizes`, kept from call to call and grown as needed (NULL if
   it cannot be had): freshly allocated per call, a long context's few hundred KB were mapped and faulted in each
   time. Kept until the thread ends: at most what the longest call needed, per thread of the pool. */
static __thread char *kept;
static __thread size_t kept_size;
static char *scratch(const size_t sizes[4]) {
    const size_t size = part(sizes, 4);
    if (size > kept_size) {
        free(kept);
        kept = malloc(size);
        kept_size = kept ? size : 0;
    }
    return kept;
}

/* q [B, H, T, d] and out [B, T, H, d]: contiguous float32; allowed [B, T, V] (0 or 1), contiguous.
   k, v [B, KV, V, d]: float32 (bf16 = 0) or bfloat16 (bf16 = 1), rows of d contiguous, the first two dimensions
   at strides (in elements) k_b, k_kv and v_b, v_kv: a cache's view, read in place.
   The (row, key head, query) items are split into `threads` contiguous ranges, one per thread; each thread
   transposes the keys of the heads its range touches. An item's result does not depend on the split.
   Returns 0, or 1 if scratch memory could not be had. */
int exact_attention(const float *q, const void *k, const void *v, const uint8_t *allowed, float *out,
                    int64_t B, int64_t H, int64_t KV, int64_t T, int64_t V, int64_t d, float scale,
                    float softcap, int bf16, int64_t k_b, int64_t k_kv, int64_t v_b, int64_t v_kv, int threads) {
    const int64_t group = H / KV, room = V ? V : 1, padded = (V + 15) / 16 * 16, items = B * KV * T;
    const int64_t s_stride = room + 16;  /* one head's scores, and room for the last 16 lanes */
    int failed = 0;
    #pragma omp parallel num_threads(threads) if (threads > 1 && items > 1)
    {
        int64_t first = 0, last = items;
#ifdef _OPENMP
        first = items * omp_get_thread_num() / omp_get_num_threads();
        last = items * (omp_get_thread_num() + 1) / omp_get_num_threads();
#endif
        const size_t sizes[4] = {room * sizeof(int64_t), HEADS_AT_ONCE * s_stride * sizeof(float),
                                 (padded ? padded : 16) * d * sizeof(float), (room + 16) * d * sizeof(float)};
        char *base = scratch(sizes);
        int64_t *cols = (int64_t *)base;
        float *s = (float *)(base + part(sizes, 1));
        float *k_t = (float *)(base + part(sizes, 2));  /* one head's keys, transposed */
        float *gathered = (float *)(base + part(sizes, 3));
        if (!base) {
            #pragma omp atomic write
            failed = 1;
            last = first;
        }
        int64_t transposed = -1;  /* the (row, key head) whose keys k_t holds */
        for (int64_t item = first; item < last; ++item) {
            const int64_t head_of = item / T, t = item % T, b = head_of / KV, kv = head_of % KV;
            if (head_of != transposed) {
                transpose_keys(k, bf16, b * k_b + kv * k_kv, V, d, padded, k_t);
                transposed = head_of;
            }
            const uint8_t *row = allowed + (b * T + t) * V;
            int64_t n = 0;
            for (int64_t c = 0; c < V; ++c)  /* visible columns in column order = position order */
                if (row[c]) cols[n++] = c;
            const float *keys = k_t;  /* columns 0..n-1: read in place */
            int64_t stride = padded;
            if (n && cols[n - 1] != n - 1) {  /* a tree node: its visible keys side by side, zero-padded */
                stride = (n + 15) / 16 * 16;
                for (int64_t i = 0; i < d; ++i) {
                    for (int64_t j = 0; j < n; ++j) gathered[i * stride + j] = k_t[i * padded + cols[j]];
                    for (int64_t j = n; j < stride; ++j) gathered[i * stride + j] = 0;
                }
                keys = gathered;
            }
            const int64_t v_at = b * v_b + kv * v_kv;
            for (int64_t h0 = kv * group; h0 < (kv + 1) * group; h0 += HEADS_AT_ONCE) {
                const int g = (kv + 1) * group - h0 < HEADS_AT_ONCE ? (int)((kv + 1) * group - h0) : HEADS_AT_ONCE;
                float *restrict o = out + ((b * T + t) * H + h0) * d;  /* heads h0.. side by side */
                if (n == 0) {  /* a padding query */
                    memset(o, 0, g * d * sizeof(float));
                    continue;
                }
                float norm[HEADS_AT_ONCE] = {0};
                for (int h = 0; h < g; ++h) {
                    float *restrict e = s + h * s_stride;
                    scores(q + ((b * H + h0 + h) * T + t) * d, keys, stride, n, d, e);
                    for (int64_t j = 0; j < n; ++j) e[j] *= scale;
                    if (softcap > 0)
                        for (int64_t j = 0; j < n; ++j) e[j] = tanhf(e[j] / softcap) * softcap;
                    const float top = maximum(e, n);
                    for (int64_t j = 0; j < n; j += 16) *(vec *)(e + j) = exp_nonpositive(load(e + j) - top);
                }
                for (int64_t j = 0; j < n; ++j)  /* each head's in position order; the heads side by side */
                    for (int h = 0; h < g; ++h) norm[h] += s[h * s_stride + j];
                if (bf16)
                    weighted_sum_bf16(s, s_stride, g, (const uint16_t *)v + v_at, cols, n, d, o);
                else
                    weighted_sum_float(s, s_stride, g, (const float *)v + v_at, cols, n, d, o);
                for (int h = 0; h < g; ++h)
                    for (int64_t i = 0; i < d; ++i) o[h * d + i] /= norm[h];
            }
        }
    }
    return failed;
}
"""


def _isa_flags() -> list[str]:
    """Vector instructions for the lanes, by what PyTorch found this CPU has (its own kernels' dispatch)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    return {"AVX512": ["-march=x86-64-v4"], "AVX2": ["-march=x86-64-v3"]}.get(
        torch.backends.cpu.get_cpu_capability(), [])


def _flags(threaded: bool) -> list[str]:
    return ["-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-trapping-math", "-fno-fast-math",
            "-fno-strict-aliasing", *(["-fopenmp"] if threaded else []), *_isa_flags()]


def _build() -> Path:
    """The library, built with OpenMP (its threads are PyTorch's own libgomp pool) or, where the compiler has
    none (a bare Clang), single-threaded."""
    compiler = os.environ.get("CC", "cc")
    try:
        return _build_with(compiler, _flags(threaded=True))
    except subprocess.CalledProcessError:
        return _build_with(compiler, _flags(threaded=False))


def _build_with(compiler: str, flags: list[str]) -> Path:
    digest = hashlib.sha256("\0".join([SOURCE, compiler, *flags]).encode()).hexdigest()[:16]
    library = cache_dir() / "kernels" / f"exact_attention-{digest}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        source = Path(scratch) / "exact_attention.c"
        source.write_text(SOURCE)
        built = Path(scratch) / library.name
        subprocess.run([compiler, *flags, "-o", str(built), str(source), "-lm"], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(built, library)  # atomic: a concurrent build leaves one whole file
    return library


def _readable(key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value views [B, KV, V, d] as the kernel reads them in place: one dtype for both (its `bf16` flag),
    float32 or bfloat16, rows of d contiguous (a cache's views are); else float32 copies of both."""
    def in_place(cache: torch.Tensor) -> bool:
        return cache.dtype in (torch.float32, torch.bfloat16) and cache.stride()[2:] == (cache.shape[3], 1)
    if key.dtype == value.dtype and in_place(key) and in_place(value):
        return key, value
    return key.float().contiguous(), value.float().contiguous()


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
    function.argtypes = ([ctypes.c_void_p] * 5 + [ctypes.c_int64] * 6 + [ctypes.c_float] * 2 + [ctypes.c_int]
                         + [ctypes.c_int64] * 4 + [ctypes.c_int])
    logger.info("exact attention: C kernel %s", function)

    def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor, scale: float,
               softcap: float | None) -> torch.Tensor:
        """`query` [B, H, T, d]; `key`, `value` [B, KV, V, d]; `allowed` [B, T, V] bool -> [B, T, H, d]."""
        batch, heads, queries, dim = query.shape
        columns = key.shape[2]
        if (value.shape != key.shape or key.shape[::3] != (batch, dim) or heads % key.shape[1]
                or allowed.shape != (batch, queries, columns)):  # the C code trusts these shapes
            raise ValueError(f"exact attention: shapes q {tuple(query.shape)}, k {tuple(key.shape)}, "
                             f"v {tuple(value.shape)}, mask {tuple(allowed.shape)} do not fit")
        q = query.float().contiguous()
        key, value = _readable(key, value)
        mask = allowed.to(torch.uint8).contiguous()
        out = torch.empty(batch, queries, heads, dim)
        failed = function(q.data_ptr(), key.data_ptr(), value.data_ptr(), mask.data_ptr(), out.data_ptr(), batch,
                          heads, key.shape[1], queries, columns, dim, scale, softcap or 0.0,
                          key.dtype == torch.bfloat16, *key.stride()[:2], *value.stride()[:2],
                          torch.get_num_threads())
        if failed:
            raise MemoryError("exact attention: no memory for the kernel's scratch space")
        return out.to(query.dtype)
    return attend
