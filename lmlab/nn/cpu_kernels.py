"""Group-wise int8 weight-only matmul with fp32 activations on the CPU: `u8g_linear`, `u8g_dequantize`.

    y = u8g_linear(x, codes, scales, zeros, group_size)   # x (m, k) fp32 -> (m, n) fp32
    W = u8g_dequantize(codes, scales, zeros, group_size)  # (n, k) fp32

with W[r, j·g + i] = scales[r, j] · codes[r, j·g + i] + zeros[r, j], codes uint8 (n, k), scales and zeros fp32
(n, k/g). This is what `lmlab.nn.quant.Int8GroupLinear` multiplies by. PyTorch's CPU build has no kernel for it:
`_weight_int8pack_mm` takes one scale per output row, and both it and `_weight_int4pack_mm_for_cpu` are vectorised
for bf16 activations only (fp32 runs their scalar loop, 10–25× slower than an fp32 nn.Linear; lmlab.nn.quant).
An Inductor-compiled dequantize-and-reduce of the same formula ran 76 µs on 576 -> 1536 at one row and one thread,
against 40 µs for this kernel's first version (24 µs now) and 57 µs for an fp32 nn.Linear with the weight in cache
(measured during development; benchmarks/linear_kernels.py times the kernel on every SmolLM2 shape).

The kernel is `C_SOURCE` at the end of this file (C in a string, so that an edit to it changes this module's hash
and `lmlab reproduce` reruns the runs that used it): fp32 products and sums (FMA), the codes of each 16-wide chunk
widened once and used for up to 4 rows of x (AVX-512; the group loop unrolled for groups of 32). It splits the
output rows over `torch.get_num_threads()` POSIX threads for a weight of ~4M entries or more (an LM head; a
SmolLM2 layer is one thread), each row computed the same way whatever the split. It is compiled on first use
with the system's C compiler ($CC, else cc/gcc/clang; -O3 -march=native) into <$LMLAB_DATA or
~/.cache/lmlab>/kernels/, one file per source, compiler and CPU (written atomically, so concurrent first uses are
safe), and loaded with ctypes.
Where there is no compiler, the build fails, or $LMLAB_CPU_KERNELS=0, the same functions run in PyTorch
(dequantize, then `torch.nn.functional.linear`): same results up to fp32 summation order, slower at batch 1;
`kernel_status()` says which, and why.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import torch

ENV = "LMLAB_CPU_KERNELS"            # 0/off: never build or load the C kernel
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-fno-math-errno", "-pthread")
_PTR, _I64 = ctypes.c_void_p, ctypes.c_int64


def _cache_dir() -> Path:
    return Path(os.environ.get("LMLAB_DATA") or Path.home() / ".cache" / "lmlab").expanduser() / "kernels"


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_key() -> str:
    """What -march=native depends on: the machine and its CPU flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((ln for ln in f if ln.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return platform.machine() + flags


def _build(cc: str) -> Path:
    """The shared library for this source, compiler and CPU: built once into the cache, then reused."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join((C_SOURCE, version, _cpu_key(), " ".join(FLAGS))).encode()).hexdigest()[:20]
    out = _cache_dir() / f"cpu_kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as d:
        src, so = Path(d) / "cpu_kernels.c", Path(d) / out.name
        src.write_text(C_SOURCE, encoding="utf-8")
        r = subprocess.run([cc, *FLAGS, str(src), "-o", str(so)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise OSError(f"{Path(cc).name} exited {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}")
        os.replace(so, out)                        # atomic: a concurrent build writes the same bytes
    return out


@functools.lru_cache(maxsize=1)
def _library() -> tuple[Optional[ctypes.CDLL], str]:
    """(library, status): the loaded C kernel and "compiled: PATH", or None and why not."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return None, f"disabled (${ENV}=0)"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler ($CC, cc, gcc, clang)"
    try:
        path = _build(cc)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"lmlab.nn.cpu_kernels: C kernel unavailable, using PyTorch ({e})", stacklevel=3)
        return None, f"build failed: {e}"
    for name, pointers, ints in (("lmlab_u8g_gemm", 5, 5), ("lmlab_u8g_dequant", 4, 3)):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_int, [_PTR] * pointers + [_I64] * ints
    return lib, f"compiled: {path}"


def kernel_status() -> str:
    """'compiled: PATH' when the C kernel runs, else the reason PyTorch runs the functions instead."""
    return _library()[1]


def kernel_available() -> bool:
    return _library()[0] is not None


def check_args(x: Optional[torch.Tensor], codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_size: int) -> None:
    """ValueError (one line) unless codes (n, k) uint8, scales and zeros (n, k/g), g a multiple of 16 dividing k,
    x (m, k) or None, all on the CPU."""
    n, k = codes.shape
    if codes.dtype != torch.uint8 or group_size <= 0 or group_size % 16 or k % group_size:
        raise ValueError(f"u8g: codes must be uint8 (n, k) with k % group_size == 0 and group_size a multiple of 16 "
                         f"(got {codes.dtype} {tuple(codes.shape)}, group_size={group_size})")
    want = (n, k // group_size)
    if tuple(scales.shape) != want or tuple(zeros.shape) != want:
        raise ValueError(f"u8g: scales and zeros must be {want}, got {tuple(scales.shape)} and {tuple(zeros.shape)}")
    if x is not None and (x.dim() != 2 or x.shape[1] != k):
        raise ValueError(f"u8g: x must be (m, {k}), got {tuple(x.shape)}")
    for t in (codes, scales, zeros) + (() if x is None else (x,)):
        if t.device.type != "cpu":
            raise ValueError(f"u8g: CPU tensors only (got {t.device})")


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def u8g_dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """(n, k) fp32 W = scales · codes + zeros, per group of `group_size` inputs (module doc)."""
    check_args(None, codes, scales, zeros, group_size)
    n, k = codes.shape
    lib = _library()[0]
    if lib is None:
        g = codes.reshape(n, k // group_size, group_size).float()
        return torch.addcmul(zeros.float()[..., None], g, scales.float()[..., None]).reshape(n, k)
    c, s, z = codes.contiguous(), _f32(scales), _f32(zeros)
    out = torch.empty(n, k, dtype=torch.float32)
    lib.lmlab_u8g_dequant(c.data_ptr(), s.data_ptr(), z.data_ptr(), out.data_ptr(), n, k, group_size)
    return out


ROWS_KERNEL = 8        # up to this many rows of x the C kernel; more: dequantized blocks through torch.mm
BLOCK_ROWS = 1024      # output rows dequantized at a time for torch.mm (576 inputs: 2.4 MB fp32, in cache)


def u8g_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_size: int) -> torch.Tensor:
    """x (m, k) -> (m, n) fp32 = x @ Wᵀ in fp32 (module doc). The C kernel up to `ROWS_KERNEL` rows (it reads
    each code once for up to 4 rows, so past ~8 rows it is compute-bound and a GEMM wins); more rows, or no
    kernel: W dequantized `BLOCK_ROWS` output rows at a time and multiplied by torch.mm."""
    check_args(x, codes, scales, zeros, group_size)
    return linear_checked(x, codes.contiguous(), _f32(scales), _f32(zeros), group_size)


def linear_checked(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, z: torch.Tensor, g: int) -> torch.Tensor:
    """`u8g_linear` for arguments already known good: c uint8 (n, k), s and z fp32 (n, k/g), all contiguous CPU
    tensors, g valid, x (m, k) on the CPU (any float dtype). For layers that check once, at construction
    (Int8GroupLinear): it skips the ~4 µs of checks and casts a call, ~0.5 ms of a SmolLM2 token."""
    lib = _library()[0]
    m, (n, k) = x.shape[0], c.shape
    xc = _f32(x)
    if lib is None:
        return torch.nn.functional.linear(xc, u8g_dequantize(c, s, z, g))
    if m <= ROWS_KERNEL:
        y = torch.empty(m, n, dtype=torch.float32)
        if m and n:
            rc = lib.lmlab_u8g_gemm(xc.data_ptr(), c.data_ptr(), s.data_ptr(), z.data_ptr(), y.data_ptr(), m, n, k, g,
                                    torch.get_num_threads())
            if rc:
                raise MemoryError(f"u8g_linear: kernel returned {rc} for m={m}, n={n}, k={k}")
        return y
    yt = torch.empty(n, m, dtype=torch.float32)                       # yᵀ: each block's rows are contiguous
    buf = torch.empty(min(n, BLOCK_ROWS), k, dtype=torch.float32)
    G = k // g
    for r0 in range(0, n, BLOCK_ROWS):
        r1 = min(n, r0 + BLOCK_ROWS)
        w = buf[: r1 - r0]
        lib.lmlab_u8g_dequant(c.data_ptr() + r0 * k, s.data_ptr() + 4 * r0 * G, z.data_ptr() + 4 * r0 * G,
                              w.data_ptr(), r1 - r0, k, g)
        torch.mm(w, xc.T, out=yt[r0:r1])
    return yt.T.contiguous()


# The C kernel (module doc). Compiled by `_build`; its exported functions are declared in `_library`.
C_SOURCE = r"""/* Group-wise int8 (uint8 codes) weight-only kernels with fp32 activations, for lmlab.nn.cpu_kernels.

   W[r, j*g + i] = s[r, j] * c[r, j*g + i] + z[r, j]      c uint8 (n, k), s and z fp32 (n, k/g), g % 16 == 0

   lmlab_u8g_gemm:    y (m, n) = x (m, k) @ W^T, fp32 throughout, on up to `threads` threads (output rows split;
                      one thread below ~4M weights):
                      y[b, r] = sum_j s[r, j] * (x[b, group j] . c[r, group j]) + sum_j z[r, j] * (sum of x[b, group j])
   lmlab_u8g_dequant: out (n, k) fp32 = W.

   Per thread: with AVX-512 the codes of a 16-wide chunk are widened to fp32 once and used for up to 4 rows of x;
   without it, plain loops for the compiler to vectorise. Built by lmlab/nn/cpu_kernels.py (-O3 -march=native). */
#include <stdint.h>
#include <pthread.h>
#include <stdlib.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static void group_sums(const float *x, float *xs, int64_t m, int64_t k, int64_t g) {
  const int64_t G = k / g;
  for (int64_t b = 0; b < m; b++)
    for (int64_t j = 0; j < G; j++) {
      float t = 0.f;
      for (int64_t i = 0; i < g; i++) t += x[b * k + j * g + i];
      xs[b * G + j] = t;
    }
}

#ifdef __AVX512F__
/* NB rows of x (at x, stride k) against output row r, without the zero-point term: y[b*n + r] = sum_j s[r, j] *
   (x[b, group j] . c[r, group j]). Inlined with a constant g where g == 32, so the chunk loop unrolls. */
static inline __attribute__((always_inline)) void rows_avx512(
    const float *x, const uint8_t *cr, const float *sr, float *y, int64_t n, int64_t k, const int64_t g,
    int64_t r, const int NB) {
  const int64_t G = k / g;
  __m512 acc[4];
  for (int b = 0; b < NB; b++) acc[b] = _mm512_setzero_ps();
  for (int64_t j = 0; j < G; j++) {
    __m512 t[4];
    for (int b = 0; b < NB; b++) t[b] = _mm512_setzero_ps();
    for (int64_t i = j * g; i < (j + 1) * g; i += 16) {
      __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(cr + i))));
      for (int b = 0; b < NB; b++) t[b] = _mm512_fmadd_ps(_mm512_loadu_ps(x + b * k + i), w, t[b]);
    }
    __m512 sj = _mm512_set1_ps(sr[j]);
    for (int b = 0; b < NB; b++) acc[b] = _mm512_fmadd_ps(sj, t[b], acc[b]);
  }
  for (int b = 0; b < NB; b++) y[b * n + r] = _mm512_reduce_add_ps(acc[b]);
}

/* one row of x (m == 1), groups of 32: the loop the compiler unrolls best; y = sum_j s[r, j] * (x_j . c_rj) */
static void gemv32_avx512(const float *x, const uint8_t *c, const float *s, float *y, int64_t n, int64_t k) {
  const int64_t G = k / 32;
  for (int64_t r = 0; r < n; r++) {
    const uint8_t *cr = c + r * k;
    const float *sr = s + r * G;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < G; j++) {
      __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(cr + j * 32))));
      __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(cr + j * 32 + 16))));
      __m512 t = _mm512_mul_ps(_mm512_loadu_ps(x + j * 32), w0);
      t = _mm512_fmadd_ps(_mm512_loadu_ps(x + j * 32 + 16), w1, t);
      acc = _mm512_fmadd_ps(_mm512_set1_ps(sr[j]), t, acc);
    }
    y[r] = _mm512_reduce_add_ps(acc);
  }
}

static inline __attribute__((always_inline)) void gemm_avx512(
    const float *x, const uint8_t *c, const float *s, float *y, int64_t m, int64_t rows, int64_t ystride,
    int64_t k, const int64_t g) {
  const int64_t G = k / g;
  for (int64_t r = 0; r < rows; r++) {
    const uint8_t *cr = c + r * k;
    const float *sr = s + r * G;
    int64_t b = 0;
    for (; b + 4 <= m; b += 4) rows_avx512(x + b * k, cr, sr, y + b * ystride, ystride, k, g, r, 4);
    switch (m - b) {
      case 3: rows_avx512(x + b * k, cr, sr, y + b * ystride, ystride, k, g, r, 3); break;
      case 2: rows_avx512(x + b * k, cr, sr, y + b * ystride, ystride, k, g, r, 2); break;
      case 1: rows_avx512(x + b * k, cr, sr, y + b * ystride, ystride, k, g, r, 1); break;
      default: break;
    }
  }
}
#endif

/* Output rows [r0, r1) of y (m, n): what one thread computes. */
typedef struct {
  const float *x, *s, *z, *xs;
  const uint8_t *c;
  float *y;
  int64_t m, n, k, g, r0, r1;
} job_t;

static void *run_job(void *arg) {
  const job_t *j = (const job_t *)arg;
  const int64_t m = j->m, n = j->n, k = j->k, g = j->g, G = k / g, rows = j->r1 - j->r0;
  const uint8_t *c = j->c + j->r0 * k;
  const float *s = j->s + j->r0 * G, *z = j->z + j->r0 * G, *x = j->x, *xs = j->xs;
  float *y = j->y + j->r0;
#ifdef __AVX512F__
  if (g == 32 && m == 1) gemv32_avx512(x, c, s, y, rows, k);
  else if (g == 32) gemm_avx512(x, c, s, y, m, rows, n, k, 32);
  else gemm_avx512(x, c, s, y, m, rows, n, k, g);
#else
  for (int64_t r = 0; r < rows; r++) {
    const uint8_t *cr = c + r * k;
    const float *sr = s + r * G;
    for (int64_t b = 0; b < m; b++) {
      const float *xb = x + b * k;
      float out = 0.f;
      for (int64_t q = 0; q < G; q++) {
        float t = 0.f;
        for (int64_t i = q * g; i < (q + 1) * g; i++) t += xb[i] * (float)cr[i];
        out += sr[q] * t;
      }
      y[b * n + r] = out;
    }
  }
#endif
  for (int64_t b = 0; b < m; b++)          /* the zero points: y[b, r] += z[r, :] . xs[b, :] */
    for (int64_t r = 0; r < rows; r++) {
      float o = 0.f;
      for (int64_t q = 0; q < G; q++) o += z[r * G + q] * xs[b * G + q];
      y[b * n + r] += o;
    }
  return NULL;
}

#define MAX_THREADS 64
#define PAR_MIN_WEIGHTS (1 << 22)   /* below ~4M weights a thread's start costs more than it saves */

int lmlab_u8g_gemm(const float *x, const uint8_t *c, const float *s, const float *z, float *y,
                   int64_t m, int64_t n, int64_t k, int64_t g, int64_t threads) {
  if (g <= 0 || g % 16 || k % g) return 1;
  const int64_t G = k / g;
  float *xs = (float *)malloc(sizeof(float) * (size_t)(m * G + 1));
  if (!xs) return 2;
  group_sums(x, xs, m, k, g);
  int64_t T = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
  if (n * k < PAR_MIN_WEIGHTS || n < 16 * T) T = 1;
  job_t jobs[MAX_THREADS];
  pthread_t tids[MAX_THREADS];
  int started[MAX_THREADS] = {0};
  const int64_t per = ((n + T - 1) / T + 15) / 16 * 16;   /* rows per thread, a multiple of 16 */
  for (int64_t t = 0; t < T; t++) {
    const int64_t r0 = t * per < n ? t * per : n, r1 = (t + 1) * per < n ? (t + 1) * per : n;
    jobs[t] = (job_t){x, s, z, xs, c, y, m, n, k, g, r0, r1};
  }
  for (int64_t t = 1; t < T; t++) started[t] = pthread_create(&tids[t], NULL, run_job, &jobs[t]) == 0;
  run_job(&jobs[0]);
  for (int64_t t = 1; t < T; t++) {
    if (started[t]) pthread_join(tids[t], NULL);
    else run_job(&jobs[t]);                 /* no thread to be had: this one does it */
  }
  free(xs);
  return 0;
}

int lmlab_u8g_dequant(const uint8_t *c, const float *s, const float *z, float *out, int64_t n, int64_t k, int64_t g) {
  if (g <= 0 || k % g) return 1;
  const int64_t G = k / g;
  for (int64_t r = 0; r < n; r++)
    for (int64_t j = 0; j < G; j++) {
      const float sj = s[r * G + j], zj = z[r * G + j];
      const uint8_t *cj = c + r * k + j * g;
      float *oj = out + r * k + j * g;
      for (int64_t i = 0; i < g; i++) oj[i] = sj * (float)cj[i] + zj;
    }
  return 0;
}
"""
