"""Weight-only int8 / int4 linear layers on PyTorch's own CPU kernels, and `quantize_` for a Decoder.

    quantize_(model, "int8")                   # every nn.Linear but the LM head -> Int8Linear, in place
    quantize_(model, "int4", group_size=128)   # -> Int4Linear (groups of 128 input features share a scale)
    quantize_(model, "bf16")                   # -> BF16Linear (bf16 weights, bf16 GEMM, fp32 accumulation)
    quantize_(model, "int8g", group_size=32)   # -> Int8GroupLinear (int8 codes, a scale and zero per group, fp32)

Notation: n = out_features, k = in_features, g = group size, m = activation rows (leading dims flattened).

int8, per-output-channel symmetric: w[n, k] ≈ s[n] · q[n, k], q ∈ -127..127, s[n] = max_k |w[n, k]| / 127.
    y = x @ (s · q)ᵀ by `torch.ops.aten._weight_int8pack_mm(x (m, k), q (n, k) int8, s (n,))`.
int4, group-wise asymmetric (min/max): in group j of row n, w[n, j·g + i] ≈ d[n, j] · q + lo[n, j], q ∈ 0..15,
    d = (max − min) / 15, lo = min: the q=0 code is the group's minimum, q=15 its maximum. This is llama.cpp's
    Q4_1 (d, m) exactly, so a Q4_1 GGUF loads without a float detour (lmlab.models.gguf_quant).
    PyTorch's CPU kernel computes (q − 8) · scale + zero, so it gets scale = d, zero = lo + 8·d in a
    (k/g, n, 2) `scales_and_zeros` tensor, and the codes packed by `_convert_weight_to_int4pack_for_cpu`
    (a layout that depends on the CPU's vector width); y by `_weight_int4pack_mm_for_cpu`. The state dict holds
    the codes two a byte in the portable `pack_int4` layout (`qweight`), so a checkpoint moves between
    machines; the kernel's copy is rebuilt from it (a non-persistent buffer: int4 layers hold their codes twice,
    still 1/4 of fp32).
int8 with input groups (`input_group_size=g`, int8 only): one factor c[j] per group j of g input features as well
    as r[n] per output row, so block (n, j) gets the grid step r[n]·c[j] instead of s[n]; with zero points
    (default) each block is first centred on z[n, j] = (max + min) / 2. w[n, k] ≈ r[n]·c[j]·q[n, k] + z[n, j],
    q ∈ -127..127, r and c small rank-1 steps that fit every block (`fit_row_col_steps`). The kernel still
    takes one scale per row: y = r · ((x·c) @ qᵀ) — c multiplies the activation (one (k,) vector) before the same
    single `_weight_int8pack_mm` call — plus (group sums of x) @ zᵀ, an (m, k/g) @ (k/g, n) fp32 matmul. Measured
    on SmolLM2's Q4_1 weights (benchmarks/RESULTS.md, "int8 with input groups"): weight error −19 % vs per-row
    int8, nearly all from the zero points (c alone: −0.5 %; a row's largest block range is a median 1.41× a
    block's); greedy agreement with fp32 25 → 70 % (bf16), still short of 90 %, for +14 % decode CPU. No int8
    grid per (row, block) comes near the 11-bit per-row grid that agreement needs there.

int8 group-wise (`Int8GroupLinear`, scheme "int8g"), asymmetric: in group j of row n, w ≈ s[n, j] · c + z[n, j],
    c ∈ 0..255 (uint8), s = (max − min) / 255, z = min, in fp32, and fp32 activations and sums throughout. The
    multiply is lmlab's own C kernel (`lmlab.nn.cpu_kernels`: PyTorch has no group-wise int8 kernel, and none
    vectorised for fp32 activations), so none of the bf16 roundings below apply, and the `compute` modes do not.
    It holds llama.cpp's Q4_1 (c = q, s = d, z = m) and Q8_0 (c = q + 128, s = d, z = −128·d) blocks exactly,
    so a GGUF of those loads losslessly (lmlab.models.gguf_quant), the tied LM head included. 1 byte a weight
    plus 8 per group of 32: 1.25 bytes, 31 % of what fp32 reads at batch 1.

Compute (`compute=`): in torch 2.13's CPU build both kernels are vectorised (AVX-512) for bf16 activations only;
with fp32 or fp16 activations they run a scalar loop, 10-25× slower than an fp32 nn.Linear at batch 1 (measured:
576 -> 1536 at one thread, fp32 nn.Linear 55-80 µs, int8 640 µs / int4 1430 µs with fp32 activations, 33 µs /
46 µs with bf16). The kernels accumulate in fp32 and round their result to the activation dtype. Three modes:
    "bf16"    (default) the input rounded to bf16 (relative error ≤ 2⁻⁸), the scales cast to bf16, one kernel
              call, its bf16 result (correctly rounded, measured) returned in the caller's dtype. llama.cpp
              rounds activations further (to 8 bits) for its Q4/Q8 dot products.
    "bf16x2"  the fp32 input split into two bf16 halves, x = hi + lo up to 2⁻¹⁶ relative (lo = bf16(x − hi)),
              stacked as 2·m rows of ONE kernel call (at batch 1 the weight read sets the time, not the row
              count) and the halves' results added in fp32. int8 also applies its per-row scale in fp32 after
              the kernel (the kernel gets scales of 1), so only the kernel's bf16 rounding of each half's result
              (≤ 2⁻⁸ of |y|) and, for int4, the bf16 scales and zeros remain. Measured on SmolLM2, batch-1 decode,
              one thread: +12 % CPU time per token for int4, +5 % for int8 (benchmarks/quant_accuracy.py).
    "fp32"    fp32 activations and scales through the kernels' scalar loop: the dequantised weights' exact
              product (fp32 accumulation), 10-25× slower than fp32 nn.Linear; a reference, not a decode path.
The kernels want the scales in the compute dtype: kept in fp32, cast once and cached. They are CPU kernels (int4:
CPU only).

The LM head: `quantize_` leaves it in float by default (`skip=("head",)`; pass `skip=()` to include it). SmolLM2's
head is tied to the embedding (49152 × 576, 21 % of the weights) and at batch 1 it is the largest matmul of a
decode step: one thread, one token, fp32 nn.Linear 7.4 ms, bf16 nn.Linear 4.0 ms, Int8Linear 2.0 ms, Int4Linear
1.3 ms (measured during development on the loaded 2-core machine, one after the other). But a per-channel int8
copy of SmolLM2's head (its GGUF holds it as group-32 Q8_0) moves perplexity by +0.10 where the int4 blocks move
it by +0.013 (benchmarks/quant_accuracy.py, "int4, int8 head" arm), so `lmlab generate/serve --quantize` keep
the head float too (`lmlab.infer.cli.QUANT_HEAD`).

bf16 weights (`BF16Linear`): the weight rounded to bf16 once, x rounded to bf16 per call, one bf16 GEMM (oneDNN's
AVX512-BF16 path on CPUs that have it; fp32 accumulation, bf16 result) returned in the caller's dtype. Not a
quantization grid, but the same weight-only layer contract, and the dtype vLLM's CPU backend runs. At batch 1
it reads half the bytes of fp32 and twice those of int8; with 16 or more rows the int8/int4 kernels' cost grows
with the rows while the GEMM's barely does (one thread, 576 -> 3072: 32 rows int4 0.69 ms, bf16 0.41 ms, fp32
1.48 ms; 1024 rows 21.2 / 7.8 / 35.8 ms), so it is the format for batched decode and long prefills.

`naive_*` are the float64 reference twins the tests compare the kernels with.
"""
from __future__ import annotations

from typing import Iterable, Literal, Optional

import torch
from torch import nn

from lmlab.config import ConfigError

SCHEMES = ("int8", "int4", "bf16", "int8g")
COMPUTE = ("bf16", "bf16x2", "fp32")    # how a layer feeds the kernel (module doc)
INT4_GROUP_SIZES = (32, 64, 128, 256)   # what _weight_int4pack_mm_for_cpu accepts


# ------------------------------------------------------------------------------------------ int4 nibbles
def pack_int4(q: torch.Tensor, block: Optional[int] = None) -> torch.Tensor:
    """Codes (..., k) in 0..15 -> (..., k/2) uint8, two codes a byte, the first of each pair in the low nibble.
    block=None pairs neighbours (q[2i], q[2i+1]); block=b pairs q[j] with q[j + b/2] inside each run of b codes
    (llama.cpp's Q4_0/Q4_1 layout with b = 32)."""
    k = q.shape[-1]
    step = 2 if block is None else block
    if k % step or (block is not None and block % 2):
        raise ConfigError(f"pack_int4: last dim {k} is not a multiple of {step}")
    q = q.to(torch.uint8)
    if block is None:
        lo, hi = q[..., 0::2], q[..., 1::2]
    else:
        r = q.reshape(*q.shape[:-1], k // block, 2, block // 2)   # (..., blocks, halves, b/2)
        lo, hi = r[..., 0, :].reshape(*q.shape[:-1], k // 2), r[..., 1, :].reshape(*q.shape[:-1], k // 2)
    return lo | (hi << 4)


def unpack_int4(p: torch.Tensor, block: Optional[int] = None) -> torch.Tensor:
    """Inverse of `pack_int4`: (..., k/2) uint8 -> (..., k) uint8 codes 0..15 (same `block` meaning)."""
    p = p.to(torch.uint8)
    lo, hi = p & 0x0F, p >> 4
    if block is None:
        return torch.stack([lo, hi], dim=-1).reshape(*p.shape[:-1], 2 * p.shape[-1])
    half = block // 2
    if p.shape[-1] % half:
        raise ConfigError(f"unpack_int4: last dim {p.shape[-1]} is not a multiple of {half}")
    nb = p.shape[-1] // half
    lo, hi = lo.reshape(*p.shape[:-1], nb, half), hi.reshape(*p.shape[:-1], nb, half)
    return torch.cat([lo, hi], dim=-1).reshape(*p.shape[:-1], 2 * p.shape[-1])


# ------------------------------------------------------------------------------- quantizers and twins
def quantize_int8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (n, k) -> (q (n, k) int8 in -127..127, s (n,) fp32), w ≈ s[:, None] · q."""
    w = w.detach().float()
    s = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(w / s[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, s


def fit_row_col_steps(a: torch.Tensor, iters: int = 20, init: str = "lsq") -> tuple[torch.Tensor, torch.Tensor]:
    """Small rank-1 steps over the needed ones: a (n, G) ≥ 0 -> r (n,), c (G,) > 0 with r[n]·c[j] ≥ a[n, j].
    Log domain: start from `init` — "lsq", the least-squares fit log a ≈ u[n] + v[j] (row and column means), or
    "row", the per-row grid (u = the row's largest need, v = 0) — then alternately lower each column's v and each
    row's u to the least value that keeps every block covered (each pass only shrinks steps, so the total squared
    step Σ (r·c)² never grows, and from "row" no block's step exceeds its row's per-row step). Blocks with a = 0
    (all-zero weights) need no step and are left out; c is normalised to geometric mean 1."""
    if init not in ("lsq", "row"):
        raise ConfigError(f"fit_row_col_steps: init {init!r} is not one of lsq, row")
    la = torch.where(a > 0, a.double().log(), -torch.inf)                   # (n, G); -inf: no constraint
    known = torch.isfinite(la)
    zeroed = torch.where(known, la, 0.0)

    def finite(t: torch.Tensor) -> torch.Tensor:                           # an all-zero row / column: any factor
        return torch.where(torch.isfinite(t), t, 0.0)

    if init == "lsq":
        mean_all = zeroed.sum() / known.sum().clamp_min(1)
        v = finite(torch.where(known.any(0), zeroed.sum(0) / known.sum(0).clamp_min(1) - mean_all, 0.0))
        u = finite((la - v).amax(1))
    else:
        u = finite(la.amax(1))
    for _ in range(iters):
        v = finite((la - u[:, None]).amax(0))
        u = finite((la - v).amax(1))
    shift = v.mean()
    return (u + shift).exp().float(), (v - shift).exp().float()


def quantize_int8_grouped_weight(w: torch.Tensor, group_size: int, zero_points: bool = True, init: str = "lsq"
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """w (n, k) -> (q (n, k) int8, r (n,), c (k/g,), z (n, k/g) or None), all fp32 but q:
    w ≈ r[n]·c[j]·q[n, k] + z[n, j] with j = k // g the input group. Block (n, j)'s grid step is r[n]·c[j]
    (`fit_row_col_steps(init=init)` of the steps each block needs for its codes to fit -127..127); with
    `zero_points` each block is centred on z = (max + min) / 2 first (its half-range, not its largest |w|, sets
    the step needed)."""
    n, k = w.shape
    wb = w.detach().float().reshape(n, k // group_size, group_size)            # (n, k/g, g)
    if zero_points:
        hi, lo = wb.amax(-1), wb.amin(-1)
        z = (hi + lo) / 2
        half = (hi - lo) / 2
        wb = wb - z[..., None]
    else:
        z, half = None, wb.abs().amax(-1)
    r, c = fit_row_col_steps(half / 127, init=init)
    step = (r[:, None] * c[None]).clamp_min(torch.finfo(torch.float32).tiny)   # (n, k/g)
    q = torch.round(wb / step[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(n, k), r, c, z


def quantize_int8_group_weight(w: torch.Tensor, group_size: int
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (n, k) -> (codes (n, k) uint8 0..255, s (n, k/g), z (n, k/g) fp32): per group, z = min and
    s = (max − min) / 255 (1 for a constant group, whose codes are then 0), c = round((w − z) / s)."""
    n, k = w.shape
    wg = w.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = wg.amin(-1), wg.amax(-1)
    s = (hi - lo) / 255
    s = torch.where(s > 0, s, torch.ones_like(s))
    c = ((wg - lo[..., None]) / s[..., None]).round_().clamp_(0, 255).to(torch.uint8)
    return c.reshape(n, k), s, lo


def quantize_int4_weight(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (n, k) -> (q (n, k) uint8 codes 0..15, d (n, k/g) fp32, lo (n, k/g) fp32), w ≈ d · q + lo per group."""
    n, k = w.shape
    wg = w.detach().float().reshape(n, k // group_size, group_size)          # (n, k/g, g)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
    d = ((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round((wg - lo[..., None]) / d[..., None]).clamp_(0, 15).to(torch.uint8)
    return q.reshape(n, k), d, lo


def naive_int8_weight(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """float64 twin: the (n, k) weight an int8 (q, s) pair stands for."""
    return q.double() * s.double()[:, None]


def naive_int8_grouped_weight(q: torch.Tensor, r: torch.Tensor, c: torch.Tensor, z: Optional[torch.Tensor],
                              group_size: int) -> torch.Tensor:
    """float64 twin: the (n, k) weight r[n]·c[j]·q[n, k] (+ z[n, j]) stands for, j = k // group_size."""
    w = q.double() * r.double()[:, None] * c.double().repeat_interleave(group_size)[None, :]
    return w + z.double().repeat_interleave(group_size, 1) if z is not None else w


def naive_int4_weight(q: torch.Tensor, d: torch.Tensor, lo: torch.Tensor, group_size: int) -> torch.Tensor:
    """float64 twin: the (n, k) weight int4 codes with per-group (d, lo) stand for."""
    return q.double() * d.double().repeat_interleave(group_size, 1) + lo.double().repeat_interleave(group_size, 1)


def naive_linear(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float64 dequantize-then-matmul twin: x (..., k) @ w (n, k)ᵀ (+ bias)."""
    y = x.double() @ w.double().T
    return y + bias.double() if bias is not None else y


# ------------------------------------------------------------------------------------------- layers
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _QuantLinear(nn.Module):
    """What Int8Linear and Int4Linear share: the compute mode, cached scales, the reshape around the kernel."""

    in_features: int
    out_features: int
    SCALES = ""                                   # name of the fp32 scales buffer the kernel reads

    def __init__(self, compute: str):
        super().__init__()
        _check_compute(compute)
        self.compute = compute
        self._cached: dict = {}

    def _scales(self, dtype: torch.dtype) -> torch.Tensor:
        buf = getattr(self, self.SCALES)
        key = (dtype, buf.data_ptr(), buf._version)
        if key not in self._cached:
            self._cached = {key: buf.to(dtype).contiguous()}
        return self._cached[key]

    def _kernel(self, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _kernel_fp32_out(self, x: torch.Tensor) -> torch.Tensor:
        """bf16 rows (r, k) -> fp32 (r, n) for "bf16x2": the kernel's bf16 result, widened."""
        return self._kernel(x, self._scales(torch.bfloat16)).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in FLOAT_DTYPES:
            raise ConfigError(f"quantized linear: activations must be fp32/bf16/fp16, got {x.dtype}")
        x2 = x.reshape(-1, self.in_features)                                          # (m, k)
        if self.compute == "bf16x2":
            xf = x2.float()
            hi = xf.to(torch.bfloat16)
            lo = (xf - hi.float()).to(torch.bfloat16)                                 # x = hi + lo (to 2^-16)
            y2 = self._kernel_fp32_out(torch.cat([hi, lo]).contiguous())              # (2m, n), one call
            y = (y2[: len(hi)] + y2[len(hi):]).to(x.dtype)
        else:
            cd = torch.bfloat16 if self.compute == "bf16" else torch.float32
            y = self._kernel(x2.to(cd).contiguous(), self._scales(cd)).to(x.dtype)   # (m, n)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _repr(self, what: str) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{what}, compute={self.compute}")


class Int8Linear(_QuantLinear):
    """y = x @ (s · q)ᵀ + b with q (n, k) int8 and one fp32 scale per output row (see the module doc).

    With `input_group_size=g` (module doc, "int8 with input groups"): w ≈ r[n]·c[j]·q + z[n, j] for input group
    j = k // g; the activation is multiplied by c (one factor per input feature) before the same single
    `_weight_int8pack_mm` call with row scales r, and the zero points, if any, add (group sums of x) @ zᵀ in fp32."""

    SCALES = "scales"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, compute: str = "bf16",
                 input_group_size: Optional[int] = None, zero_points: bool = False):
        super().__init__(compute)
        self.in_features, self.out_features = in_features, out_features
        self.input_group_size = input_group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        if input_group_size is not None:
            _check_input_group("Int8Linear", in_features, input_group_size)
            groups = in_features // input_group_size
            self.register_buffer("in_scales", torch.ones(groups))
            self.register_buffer("zeros", torch.zeros(out_features, groups) if zero_points else None)
        self._cvec: tuple = ()

    @classmethod
    def from_qparams(cls, q: torch.Tensor, s: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     compute: str = "bf16", in_scales: Optional[torch.Tensor] = None,
                     zeros: Optional[torch.Tensor] = None, input_group_size: Optional[int] = None) -> "Int8Linear":
        """From codes q (n, k), row scales s (n,) and, with `input_group_size`, the groups' factors `in_scales`
        (k/g,) and optional `zeros` (n, k/g): w = s[n]·in_scales[j]·q (+ zeros[n, j])."""
        if (input_group_size is None) != (in_scales is None):
            raise ConfigError("Int8Linear.from_qparams: in_scales and input_group_size go together")
        m = cls(q.shape[1], q.shape[0], bias=bias is not None, compute=compute, input_group_size=input_group_size,
                zero_points=zeros is not None)
        m.qweight.copy_(q)
        m.scales.copy_(s)
        if input_group_size is not None:
            m.in_scales.copy_(in_scales)
            if zeros is not None:
                m.zeros.copy_(zeros)
        if bias is not None:
            m.bias.copy_(bias.detach())
        return m

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: Optional[int] = None, compute: str = "bf16",
                   input_group_size: Optional[int] = None, zero_points: bool = True) -> "Int8Linear":
        """Per-channel int8 copy of `linear` (group_size is accepted for a uniform signature and ignored); with
        `input_group_size` the per-row × per-input-group grid of `quantize_int8_grouped_weight`."""
        if input_group_size is None:
            return cls.from_qparams(*quantize_int8_weight(linear.weight), bias=linear.bias, compute=compute)
        _check_input_group("Int8Linear", linear.in_features, input_group_size)
        q, r, c, z = quantize_int8_grouped_weight(linear.weight, input_group_size, zero_points)
        return cls.from_qparams(q, r, bias=linear.bias, compute=compute, in_scales=c, zeros=z,
                                input_group_size=input_group_size)

    def _kernel(self, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.qweight, scales)

    def _kernel_fp32_out(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel with scales of 1 (x @ qᵀ, fp32 accumulation, bf16 result), then the fp32 per-row scale."""
        key = ("ones", self.out_features)
        if key not in self._cached:
            self._cached[key] = torch.ones(self.out_features, dtype=torch.bfloat16)
        return self._kernel(x, self._cached[key]).float() * self.scales.float()

    def _in_scale_vector(self) -> torch.Tensor:
        """in_scales repeated over each group's features: (k,) fp32, cached."""
        key = (self.in_scales.data_ptr(), self.in_scales._version)
        if not self._cvec or self._cvec[0] != key:
            self._cvec = (key, self.in_scales.float().repeat_interleave(self.input_group_size).contiguous())
        return self._cvec[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_group_size is None:
            return super().forward(x)
        if x.dtype not in FLOAT_DTYPES:
            raise ConfigError(f"quantized linear: activations must be fp32/bf16/fp16, got {x.dtype}")
        x2 = x.reshape(-1, self.in_features).float()                                  # (m, k)
        y = super().forward(x2 * self._in_scale_vector())                             # (m, n) fp32, bias added
        if self.zeros is not None:
            sums = x2.reshape(len(x2), -1, self.input_group_size).sum(-1)             # (m, k/g)
            y = torch.addmm(y, sums, self.zeros.float().T)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def dequantize(self) -> torch.Tensor:
        """The (n, k) fp32 weight this layer multiplies by."""
        w = self.qweight.float() * self.scales.float()[:, None]
        if self.input_group_size is None:
            return w
        w = w * self._in_scale_vector()
        return w + self.zeros.float().repeat_interleave(self.input_group_size, 1) if self.zeros is not None else w

    def extra_repr(self) -> str:
        if self.input_group_size is None:
            return self._repr("int8 per-channel")
        zp = ", zero points" if self.zeros is not None else ""
        return self._repr(f"int8 per-channel × input groups of {self.input_group_size}{zp}")


class Int4Linear(_QuantLinear):
    """y = x @ Wᵀ + b with W = d · q + lo per group of `group_size` input features, q 4-bit (module doc)."""

    SCALES = "scales_and_zeros"

    def __init__(self, in_features: int, out_features: int, group_size: int = 32, bias: bool = False,
                 compute: str = "bf16"):
        super().__init__(compute)
        _check_group(group_size)
        _check_shape("Int4Linear", in_features, out_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("qweight", torch.full((out_features, in_features // 2), 0x88, dtype=torch.uint8))
        self.register_buffer("scales_and_zeros", torch.zeros(in_features // group_size, out_features, 2))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("packed", torch.empty(0, dtype=torch.uint8), persistent=False)   # kernel layout

    def _repack(self) -> None:
        codes = unpack_int4(self.qweight).to(torch.int32).contiguous()                # (n, k)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)

    def packed_weight(self) -> torch.Tensor:
        """The codes in the kernel's layout, made from `qweight` on first use after construction (a layer that is
        loaded or built from codes at once, as every constructor here does, converts its codes once)."""
        if self.packed.numel() == 0:
            self._repack()
        return self.packed

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.packed = torch.empty(0, dtype=torch.uint8)     # new codes: converted again on first use

    @classmethod
    def from_qparams(cls, q: torch.Tensor, d: torch.Tensor, lo: torch.Tensor, group_size: int,
                     bias: Optional[torch.Tensor] = None, compute: str = "bf16") -> "Int4Linear":
        """From codes q (n, k) in 0..15 and per-group d, lo (n, k/g): W = d · q + lo."""
        n, k = q.shape
        m = cls(k, n, group_size, bias=bias is not None, compute=compute)
        m.qweight.copy_(pack_int4(q))
        d, lo = d.float(), lo.float()
        # kernel: (q - 8)·scale + zero == d·q + lo  with scale = d, zero = lo + 8d
        m.scales_and_zeros.copy_(torch.stack([d.T, (lo + 8 * d).T], dim=-1))          # (k/g, n, 2)
        if bias is not None:
            m.bias.copy_(bias.detach())
        return m

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 32, compute: str = "bf16") -> "Int4Linear":
        _check_group(group_size)
        _check_shape("Int4Linear", linear.in_features, linear.out_features, group_size)
        return cls.from_qparams(*quantize_int4_weight(linear.weight, group_size), group_size, bias=linear.bias,
                                compute=compute)

    def _kernel(self, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed_weight(), self.group_size, scales)

    def dequantize(self) -> torch.Tensor:
        """The (n, k) fp32 weight this layer multiplies by, (q − 8) · scale + zero as the kernel computes it."""
        sz = self.scales_and_zeros.float().repeat_interleave(self.group_size, dim=0)     # (k, n, 2)
        q = unpack_int4(self.qweight).float()                                            # (n, k)
        return (q - 8) * sz[..., 0].T + sz[..., 1].T

    def extra_repr(self) -> str:
        return self._repr(f"int4 group_size={self.group_size}")


class BF16Linear(nn.Module):
    """y = x @ Wᵀ + b with W (and b) stored in bf16; x rounded to bf16 per call (module doc)."""

    compute = "bf16"

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.bfloat16) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: Optional[int] = None, compute: str = "bf16") -> "BF16Linear":
        """A bf16 copy of `linear` (group_size and compute accepted for `quantize_`'s uniform call, unused)."""
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            m.weight.copy_(linear.weight)
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in FLOAT_DTYPES:
            raise ConfigError(f"bf16 linear: activations must be fp32/bf16/fp16, got {x.dtype}")
        return torch.nn.functional.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        """The (n, k) fp32 weight this layer multiplies by."""
        return self.weight.float()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, bf16"


class Int8GroupLinear(nn.Module):
    """y = x @ Wᵀ + b with W = s · c + z per group of `group_size` input features, c uint8, s and z fp32, in fp32
    math by `lmlab.nn.cpu_kernels.u8g_linear` (module doc, "int8 group-wise"). CPU only."""

    compute = "fp32"

    def __init__(self, in_features: int, out_features: int, group_size: int = 32, bias: bool = False):
        super().__init__()
        _check_int8g("Int8GroupLinear", in_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups))
        self.register_buffer("zeros", torch.zeros(out_features, groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_qparams(cls, c: torch.Tensor, s: torch.Tensor, z: torch.Tensor, group_size: int,
                     bias: Optional[torch.Tensor] = None) -> "Int8GroupLinear":
        """From codes c (n, k) in 0..255 and per-group s, z (n, k/g): W = s · c + z."""
        n, k = c.shape
        m = cls(k, n, group_size, bias=bias is not None)
        m.qweight.copy_(c)
        m.scales.copy_(s)
        m.zeros.copy_(z)
        if bias is not None:
            m.bias.copy_(bias.detach())
        return m

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 32, compute: str = "fp32") -> "Int8GroupLinear":
        """The min/max grid of `quantize_int8_group_weight` (`compute` accepted for quantize_'s uniform call)."""
        _check_int8g("Int8GroupLinear", linear.in_features, group_size)
        return cls.from_qparams(*quantize_int8_group_weight(linear.weight, group_size), group_size, bias=linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lmlab.nn.cpu_kernels import linear_checked

        if x.dtype not in FLOAT_DTYPES:
            raise ConfigError(f"int8g linear: activations must be fp32/bf16/fp16, got {x.dtype}")
        if x.device.type != "cpu":
            raise ConfigError(f"int8g linear: a CPU layer, got activations on {x.device}")
        y = linear_checked(x.reshape(-1, self.in_features), *self._buffers_for_kernel(), self.group_size)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _buffers_for_kernel(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """qweight, scales, zeros as the kernel takes them (uint8 / fp32, contiguous, CPU), checked and cast only
        when a buffer changed (construction, load_state_dict, .to())."""
        bufs = (self.qweight, self.scales, self.zeros)
        key = tuple((b.data_ptr(), b._version, b.dtype) for b in bufs)
        if getattr(self, "_kernel_key", None) != key:
            from lmlab.nn.cpu_kernels import check_args

            c, s, z = self.qweight.contiguous(), self.scales.float().contiguous(), self.zeros.float().contiguous()
            check_args(None, c, s, z, self.group_size)
            self._kernel_key, self._kernel_bufs = key, (c, s, z)
        return self._kernel_bufs

    def dequantize(self) -> torch.Tensor:
        """The (n, k) fp32 weight this layer multiplies by."""
        from lmlab.nn.cpu_kernels import u8g_dequantize

        return u8g_dequantize(self.qweight, self.scales, self.zeros, self.group_size)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"int8 group_size={self.group_size}, fp32")


# quantize_'s schemes -> layer classes
LAYERS = {"int8": Int8Linear, "int4": Int4Linear, "bf16": BF16Linear, "int8g": Int8GroupLinear}


def head_skip(scheme: str) -> tuple[str, ...]:
    """What `lmlab generate/serve --quantize` leave float (`quantize_`'s `skip`): the LM head, except under "int8g",
    whose groups hold it exactly (module doc)."""
    return () if scheme == "int8g" else ("head",)


def check_scheme(scheme: str, compute: str = "bf16", input_group_size: Optional[int] = None) -> None:
    """ConfigError (one line) for a scheme, or options it does not take: `compute` modes other than the default
    and `input_group_size` are for int8/int4 (input groups: int8 only)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"quantize: scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    _check_compute(compute)
    if scheme in ("bf16", "int8g") and (input_group_size is not None or compute != "bf16"):
        raise ConfigError(f"quantize {scheme}: input_group_size and compute modes other than bf16 are for int8/int4 "
                          f"({scheme} has one arithmetic)")
    if input_group_size is not None and scheme != "int8":
        raise ConfigError(f"quantize {scheme}: input_group_size {input_group_size!r} is for int8 only")


def _check_compute(compute: str) -> None:
    if compute not in COMPUTE:
        raise ConfigError(f"quantized linear: compute {compute!r} is not one of {', '.join(COMPUTE)}")


def _check_group(group_size: int) -> None:
    if group_size not in INT4_GROUP_SIZES:
        raise ConfigError(f"int4 group size {group_size!r}: must be one of {', '.join(map(str, INT4_GROUP_SIZES))}")


def _check_input_group(what: str, k: int, input_group_size) -> None:
    if not isinstance(input_group_size, int) or input_group_size < 1 or k % input_group_size:
        raise ConfigError(f"{what} has in_features={k}, not divisible by int8 input group size {input_group_size!r}")


def _check_int8g(what: str, k: int, group_size) -> None:
    if not isinstance(group_size, int) or group_size < 16 or group_size % 16 or k % group_size:
        raise ConfigError(f"{what}: group size {group_size!r} must be a multiple of 16 dividing in_features={k}")


def _check_shape(what: str, k: int, n: int, group_size: int) -> None:
    if k % group_size:
        raise ConfigError(f"{what} has in_features={k}, not divisible by group size {group_size}")
    if n % 16:   # the CPU int4 packing works on blocks of 16 output rows
        raise ConfigError(f"{what} has out_features={n}, not a multiple of 16 (the int4 CPU kernel's block)")


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def quantize_(model: nn.Module, scheme: Literal["int8", "int4", "bf16", "int8g"], group_size: int = 32,
              skip: Iterable[str] = ("head",), compute: str = "bf16", input_group_size: Optional[int] = None,
              zero_points: bool = True) -> nn.Module:
    """Replace every nn.Linear of `model` (an lmlab Decoder) by an Int8Linear / Int4Linear / BF16Linear /
    Int8GroupLinear, in place; modules named in `skip` (and their children) stay float. Every layer is checked
    before any is replaced. `compute` ("bf16", "bf16x2", "fp32"): see the module doc. int8 only:
    `input_group_size` (and `zero_points`) select the per-row × per-input-group grid (module doc, "int8 with
    input groups"). Returns `model`."""
    check_scheme(scheme, compute, input_group_size)
    if scheme == "int4":
        _check_group(group_size)
    skip = tuple(skip)
    todo = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and not _skipped(name, skip)]
    for name, m in todo:
        if scheme == "int4":
            _check_shape(f"quantize int4: layer {name}", m.in_features, m.out_features, group_size)
        elif scheme == "int8g":
            _check_int8g(f"quantize int8g: layer {name}", m.in_features, group_size)
        elif input_group_size is not None:
            _check_input_group(f"quantize int8: layer {name}", m.in_features, input_group_size)
    kw = {"input_group_size": input_group_size, "zero_points": zero_points} if scheme == "int8" else {}
    cls = LAYERS[scheme]
    for name, m in todo:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, cls.from_float(m, group_size=group_size, compute=compute, **kw))
    return model
