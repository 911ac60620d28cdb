"""Group-wise int8 weight-only matmul with fp32 activations on the CPU: `u8g_linear`, `u8g_dequantize`.

    y = u8g_linear(x, codes, scales, zeros, group_size)   # x (m, k) fp32 -> (m, n) fp32
    W = u8g_dequantize(codes, scales, zeros, group_size)  # (n, k) fp32

with W[r, j·g + i] = scales[r, j] · codes[r, j·g + i] + zeros[r, j], codes uint8 (n, k), scales and zeros fp32
(n, k/g). This is what `lmlab.nn.quant.Int8GroupLinear` multiplies by. PyTorch's CPU build has no kernel for it:
`_weight_int8pack_mm` takes one scale per output row, and both it and `_weight_int4pack_mm_for_cpu` are vectorised
for bf16 activations only (fp32 runs their scalar loop, 10–25× slower than an fp32 nn.Linear; lmlab.nn.quant).
An Inductor-compiled dequantize-and-reduce of the same formula ran 76 µs on 576 -> 1536 at one row and one thread,
against 40 µs for this kernel's first version (30 µs now) and 57 µs for an fp32 nn.Linear with the weight in cache
(measured during development; benchmarks/linear_kernels.py times the kernel on every SmolLM2 shape).

The kernel is `cpu_kernels.c` next to this file: fp32 products and sums (FMA), the codes of each 16-wide chunk
widened once and used for up to 4 rows of x (AVX-512; the group loop unrolled for groups of 32). It splits the
output rows over `torch.get_num_threads()` POSIX threads for a weight of ~4M entries or more (an LM head; a
SmolLM2 layer is one thread), each row computed the same way whatever the split. It is compiled on first use with the system's C
compiler ($CC, else cc/gcc/clang; -O3 -march=native) into <$LMLAB_DATA or ~/.cache/lmlab>/kernels/, one file per
source, compiler and CPU (written atomically, so concurrent first uses are safe), and loaded with ctypes.
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
SOURCE = Path(__file__).with_name("cpu_kernels.c")
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
    key = hashlib.sha256(b"\0".join(x.encode() if isinstance(x, str) else x for x in
                                    (SOURCE.read_bytes(), version, _cpu_key(), " ".join(FLAGS)))).hexdigest()[:20]
    out = _cache_dir() / f"cpu_kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise OSError(f"{Path(cc).name} exited {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}")
        os.replace(tmp, out)                       # atomic: a concurrent build writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
