"""A decode path with fewer, larger operators for Llama-shaped lmlab Decoders: `FusedEngine`.

    engine = make_engine(model, tokenizer)            # FusedEngine when the model allows it, else Engine
    engine.generate(["prompt"], GenerationConfig(max_new_tokens=64))

`FusedEngine` is `lmlab.infer.engine.Engine` (same prefix tree, KV caches, Hydragen, sampling, stop handling)
with its per-forward layer loop replaced. Per layer the module path runs 7 linears (q, k, v, o, gate, up, down),
two RMSNorm autograd functions, a rotary table per projection and, under weight-only quantization, a cast to
bf16 and back around each of the 7 kernel calls. Here a layer is

    x   = rms_norm(h) in the compute dtype           h: the fp32 residual stream (b, t, d)
    qkv = x @ [Wq; Wk; Wv]ᵀ                           one linear (rows concatenated), then fp32
    q, k = rotary(q, k)                               one call for both, the table made once per forward
    y   = cache.attend(q, k, v)                       the engine's TreeKVCache, fp32, unchanged
    h  += (y @ Woᵀ)
    g, u = split(rms_norm(h) @ [Wgate; Wup]ᵀ)         one linear
    h  += (silu(g) · u) @ Wdownᵀ

so a layer makes 4 weight reads instead of 7, and a quantized one casts twice instead of 14 times: the compute
dtype is bf16 when every linear is a weight-only int8/int4/bf16 layer in "bf16" compute (the kernels' own input
dtype; lmlab.nn.quant), so x, the gate/up product and the attention output enter the kernels without a cast,
and otherwise the model's dtype (fp32 models compute exactly the module path's products, summed in another
order). A single sequence skips the prefix tree altogether: a plain KV cache per layer and one SDPA call.
The concatenated layers are copies of the model's weights (`fuse_linears`), made once at construction;
the model is not modified, and an engine made before its layers are replaced (e.g. by `quantize_`) keeps
running the old ones: make a new engine then.

`head_dtype=torch.bfloat16` keeps a bf16 copy of a float LM head (49152 × 576 for SmolLM2: at batch 1 the largest
matmul of a step), read in half the bytes; the default keeps the model's head as it is. A bf16 logit can put the
wrong token on top: at SmolLM2's logit scale (~25) bf16 steps by 0.125, two candidates 0.07 apart came out tied
and the argmax took the wrong one ("L'Étoile" for "The capital of France is Paris"). So the logits that could be
the largest are recomputed exactly. With W̃ the copy's weights, x̃ = bf16(x) its input, δ_j = ‖W̃_j − W_j‖ (kept
per row) and the GEMM summing in fp32 and rounding its output once,

    |ỹ_j − y_j| ≤ e_j = (‖x̃ − x‖ + k·2⁻²³·‖x‖)·‖W̃_j‖ + ‖x‖·δ_j + 2⁻⁸·|ỹ_j|

(input rounding, fp32 summation over k terms doubled, weight rounding by Cauchy–Schwarz, output rounding
doubled). The float argmax j* has ỹ_j* ≥ max ỹ − 2·max e; among those candidates every j with ỹ_j + e_j ≥
max_i (ỹ_i − e_i) (a superset of the possible argmaxes) is computed again from its float row, in fp32: over 268
greedy steps of SmolLM2 on 10 prompts, 3 candidates a step (median; at most 34) and 1 recomputed (at most 10);
the copy alone picks the float argmax on 97 % of them. The argmax, and every logit that could exceed the float
head's top, are then the float head's; the rest keep the copy's values, each within its e_j (at most 0.22 from
the float logits over those steps). An int8 copy (per-row scales, `_weight_int8pack_mm`) under the same bound was
tried: its kernel takes 1.64 ms a step against 1.55 for the packed bf16 copy below (`benchmarks/linear_kernels.py`,
one row, one thread; 7.0 against 3.2 ms at 16 rows).

Float and bf16 weights run as packed oneDNN linears (`packed_linear`: the weight reordered once into oneDNN's
blocked layout instead of on every call), bit-identical to `torch.mm` in bf16 here and 1.4–2.2× faster at 1–16
rows (`benchmarks/linear_kernels.py`); fp32 sums in another order.

Not fusable (`fusable(model)` says why, `make_engine` then returns the plain Engine): mixers other than
full-context Attention, FFNs other than SwiGLU, residuals other than pre-norm, LoRA/PEFT-wrapped linears,
mixed linear kinds inside one fused group. Calls with image embeddings (`extra_embeds`) run the module path.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.infer.engine import Engine
from lmlab.nn.attention import Attention, KVCache, rope_cache
from lmlab.nn.ffn import SwiGLU
from lmlab.nn.quant import LAYERS, BF16Linear, Int4Linear, Int8GroupLinear, Int8Linear
from lmlab.nn.residual import PreNormResidual

_LINEAR_KINDS = (nn.Linear, *LAYERS.values())


def fusable(model) -> Optional[str]:
    """None when `FusedEngine` can run `model`, else the first reason it cannot (one line)."""
    if type(getattr(model, "head", None)) not in _LINEAR_KINDS:
        return f"head is {type(getattr(model, 'head', None)).__name__}, not a linear layer"
    for i, blk in enumerate(getattr(model, "blocks", [])):
        a, f = blk.mixer, blk.ffn
        if type(a) is not Attention or a.window is not None:
            return f"block {i}: mixer {type(a).__name__} (needs full-context Attention)"
        if type(f) is not SwiGLU:
            return f"block {i}: ffn {type(f).__name__} (needs SwiGLU)"
        if type(blk.res_mixer) is not PreNormResidual or type(blk.res_ffn) is not PreNormResidual:
            return f"block {i}: residual {type(blk.res_mixer).__name__} (needs prenorm)"
        for group in ((a.q_proj, a.k_proj, a.v_proj), (a.o_proj,), (f.gate, f.up), (f.down,)):
            why = _group_problem(group)
            if why:
                return f"block {i}: {why}"
    return None


def _group_problem(mods) -> Optional[str]:
    kinds = {type(m) for m in mods}
    if len(kinds) != 1 or not kinds <= set(_LINEAR_KINDS):
        return "linear layers " + ", ".join(sorted(k.__name__ for k in kinds)) + " (PEFT-wrapped or mixed kinds)"
    m0 = mods[0]
    if isinstance(m0, Int4Linear) and len({(m.group_size, m.compute) for m in mods}) != 1:
        return "int4 layers with different group sizes or compute modes"
    if isinstance(m0, Int8GroupLinear) and len({m.group_size for m in mods}) != 1:
        return "int8g layers with different group sizes"
    if isinstance(m0, Int8Linear) and (any(m.input_group_size is not None for m in mods)
                                       or len({m.compute for m in mods}) != 1):
        return "int8 layers with input groups or different compute modes"
    if len({m.bias is None for m in mods}) != 1:
        return "linear layers with and without bias"
    return None


@torch.no_grad()
def fuse_linears(mods) -> nn.Module:
    """One linear layer whose output is the concatenation of `mods`' outputs (same kind, same input width):
    y = x @ [W1; W2; …]ᵀ (+ [b1; b2; …]). nn.Linear, Int8Linear (per-row scales), Int4Linear and Int8GroupLinear
    (same group size) concatenate their weights / codes and scales along the output rows; one module is returned
    as is."""
    mods = list(mods)
    why = _group_problem(mods)
    if why:
        raise ValueError(f"fuse_linears: {why}")
    if len(mods) == 1:
        return mods[0]
    m0, k = mods[0], mods[0].in_features
    n = sum(m.out_features for m in mods)
    bias = torch.cat([m.bias for m in mods]) if m0.bias is not None else None
    if isinstance(m0, Int4Linear):
        out = Int4Linear(k, n, m0.group_size, bias=bias is not None, compute=m0.compute)
        out.qweight.copy_(torch.cat([m.qweight for m in mods]))
        out.scales_and_zeros.copy_(torch.cat([m.scales_and_zeros for m in mods], dim=1))
    elif isinstance(m0, BF16Linear):
        out = BF16Linear(k, n, bias=bias is not None)
        out.weight.copy_(torch.cat([m.weight for m in mods]))
    elif isinstance(m0, Int8GroupLinear):
        out = Int8GroupLinear(k, n, m0.group_size, bias=bias is not None)
        for name in ("qweight", "scales", "zeros"):
            getattr(out, name).copy_(torch.cat([getattr(m, name) for m in mods]))
    elif isinstance(m0, Int8Linear):
        out = Int8Linear(k, n, bias=bias is not None, compute=m0.compute)
        out.qweight.copy_(torch.cat([m.qweight for m in mods]))
        out.scales.copy_(torch.cat([m.scales for m in mods]))
    else:
        w = m0.weight
        out = nn.Linear(k, n, bias=bias is not None, device=w.device, dtype=w.dtype)
        out.weight.copy_(torch.cat([m.weight for m in mods]))
    if bias is not None:
        out.bias.copy_(bias)
    return out.eval()


def _bf16_kernel(m: nn.Module) -> bool:
    return isinstance(m, tuple(LAYERS.values())) and m.compute == "bf16"


def packed_linear(weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
    """x (rows, k) -> x @ weightᵀ (+ bias) through oneDNN with the weight reordered once into its blocked layout
    (`torch.ops.mkldnn._linear_pointwise`, what Inductor's frozen CPU graphs call), or None where that op is
    missing or refuses (no mkldnn, not CPU, not fp32/bf16). x must have the weight's dtype. The same products as
    `torch.mm`, without the per-call reorder. On SmolLM2's shapes, one thread (`benchmarks/linear_kernels.py`):
    bf16 1.7–2.2× faster at 1 row and 1.4–1.5× at 16, bit-identical here; fp32 1.6–2.0× at 16 rows and 1.7× on
    the head at 1 row, 0.75–1.25× on a layer's linears at 1 row (summed in another order)."""
    if (weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16)
            or not torch.backends.mkldnn.is_available()):
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise
        wp = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        b = None if bias is None else bias.detach().to(weight.dtype).contiguous()
        op(torch.zeros(1, weight.shape[1], dtype=weight.dtype), wp, b, "none", [], "")
    except (AttributeError, RuntimeError):
        return None
    return lambda x: op(x, wp, b, "none", [], "")


def _call(m: nn.Module, cd: torch.dtype):
    """x (rows, k) in the compute dtype `cd` -> (rows, n): the kernel itself for a bias-free "bf16" int8/int4
    layer (x already bf16 and contiguous; the scales cast once here), a packed oneDNN linear for float / bf16
    weights in `cd` (`packed_linear`), else the module."""
    if isinstance(m, (nn.Linear, BF16Linear)):
        return (packed_linear(m.weight, m.bias) if m.weight.dtype == cd else None) or m
    if not _bf16_kernel(m) or m.bias is not None:
        return m
    scales = getattr(m, m.SCALES).to(torch.bfloat16).contiguous()
    if isinstance(m, Int4Linear):
        packed, group = m.packed_weight(), m.group_size
        return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, scales)
    q = m.qweight
    return lambda x: torch.ops.aten._weight_int8pack_mm(x, q, scales)


def _rms(h: torch.Tensor, w: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """lmlab.nn.norm.rms_norm (fp32 statistics) without its autograd wrapper, cast to the compute dtype."""
    return (h * torch.rsqrt(h.square().mean(-1, keepdim=True).add_(eps))).mul_(w).to(dtype)


class _Layer:
    """One block's fused weights and the constants its forward needs."""

    def __init__(self, blk):
        a, f = blk.mixer, blk.ffn
        self.modules = (fuse_linears([a.q_proj, a.k_proj, a.v_proj]), a.o_proj, fuse_linears([f.gate, f.up]), f.down)
        self.qkv = self.o = self.gate_up = self.down = None     # bind(compute dtype)
        self.norm1, self.eps1 = blk.res_mixer.norm.weight, blk.res_mixer.norm.eps
        self.norm2, self.eps2 = blk.res_ffn.norm.weight, blk.res_ffn.norm.eps
        self.h, self.kv, self.hd = a.n_head, a.n_kv, a.head_dim
        self.ff = f.gate.out_features

    def bind(self, cd: torch.dtype) -> None:
        """The four calls of the layer loop, for inputs in the compute dtype `cd` (`_call`)."""
        self.qkv, self.o, self.gate_up, self.down = (_call(m, cd) for m in self.modules)


class _OneSequenceCache:
    """The `attend` protocol of the engine's caches (nn/attention.py) for a single sequence: append, then SDPA."""

    def __init__(self, kv: KVCache):
        self.kv = kv

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        first = self.kv.length == 0                    # the prompt: queries and keys start together, causal
        k, v = self.kv.append(k, v)
        return F.scaled_dot_product_attention(q, k, v, is_causal=first and q.shape[2] > 1, enable_gqa=True)


class FusedEngine(Engine):
    """`Engine` with the fused layer loop of the module doc. Raises ValueError when `fusable(model)` objects."""

    def __init__(self, model, tokenizer=None, hydragen: bool = True, stop_token_ids: Optional[list[int]] = None,
                 head_dtype: Optional[torch.dtype] = None):
        why = fusable(model)
        if why:
            raise ValueError(f"FusedEngine: {why}")
        super().__init__(model, tokenizer, hydragen=hydragen, stop_token_ids=stop_token_ids)
        self.layers = [_Layer(b) for b in model.blocks]
        linears = [m for lay in self.layers for m in lay.modules]
        self.compute_dtype = (torch.bfloat16 if all(_bf16_kernel(m) for m in linears)
                              else model.embed.weight.dtype)
        for lay in self.layers:
            lay.bind(self.compute_dtype)
        head = model.head
        self.head_dtype = head_dtype
        self._exact_head = None     # (weight, bias) of the float head when a bf16 copy runs
        self._low_head = None       # that copy: _LowHead
        if head_dtype is not None and type(head) is nn.Linear and head.weight.dtype != head_dtype:
            if head_dtype != torch.bfloat16 or head.weight.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"FusedEngine: head_dtype {head_dtype} for a {head.weight.dtype} head: "
                                 "use torch.bfloat16 with a float32/64 head, or None")
            self._exact_head = (head.weight, head.bias)
            self._low_head = _LowHead(BF16Linear.from_float(head), head.weight)
            self.head = self._head_call = self._low_head.layer      # run through _refined_logits
        else:
            self.head = head
            self._head_call = _call(head, head.weight.dtype) if isinstance(head, (nn.Linear, BF16Linear)) else head
        cfg = model.cfg
        self.theta = cfg.rope_theta

    def _generate_tree(self, prompts, gen, stream, hydragen):
        if len(prompts) * gen.n == 1 and self._extra is None:
            return self._generate_one(prompts[0], gen, stream)
        return super()._generate_tree(prompts, gen, stream, hydragen)

    def _generate_one(self, prompt: list[int], gen, stream):
        """One sequence: nothing to share and nothing to pad, so each layer's cache is a plain KVCache and its
        attention one SDPA call, causal over the prompt, unmasked for each new token; Engine's decode loop."""
        dev, cfg = self.device, self.model.cfg
        L = len(prompt) + gen.max_new_tokens
        caches = [_OneSequenceCache(KVCache.empty(1, cfg.kv_heads, L, cfg.head_dim, dev, self.model.embed.weight.dtype))
                  for _ in self.layers]
        t0, c0 = time.perf_counter(), time.process_time()
        logits = self._forward(torch.tensor([prompt], device=dev), torch.arange(len(prompt), device=dev)[None], caches)
        self.last_stats = {"prefill_s": time.perf_counter() - t0, "prefill_cpu_s": time.process_time() - c0,
                           "level0": 0, "level1": [len(prompt)], "sequences": 1}
        pos = torch.tensor([[len(prompt)]], device=dev)

        def step_fn(nxt: torch.Tensor, step: int) -> torch.Tensor:
            return self._forward(nxt[:, None], pos + step, caches)

        return self._decode_loop([prompt], [(0, 0)], logits, gen, stream, step_fn)

    def _forward(self, idx: torch.Tensor, positions: torch.Tensor, caches: list,
                 last: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self._extra is not None:
            return super()._forward(idx, positions, caches, last)
        m, cd = self.model, self.compute_dtype
        b, t = idx.shape
        d = m.cfg.d_model
        ad = m.embed.weight.dtype                                          # the KV caches' dtype (Engine's)
        # the residual stream, ≥ fp32, updated in place (F.embedding returns a new tensor, never the weight)
        h = m.embed(idx).view(b * t, d).to(torch.promote_types(ad, torch.float32))
        hd = self.layers[0].hd
        cos, sin = rope_cache(positions.expand(b, t), hd, self.theta)
        cos = cos[:, None].to(h.dtype)                                     # (b, 1, t, hd)
        sin = torch.cat([-sin[..., :hd // 2], sin[..., hd // 2:]], -1)[:, None].to(h.dtype)
        # x·cos + rotate_half(x)·sin = x·cos + roll(x, hd/2)·[−sin₁, sin₂] (halves swapped by one roll)
        for lay, cache in zip(self.layers, caches):
            qkv = lay.qkv(_rms(h, lay.norm1, lay.eps1, cd)).view(b, t, lay.h + 2 * lay.kv, lay.hd)
            qkv = qkv.transpose(1, 2).to(h.dtype)                            # (b, heads, t, hd)
            qk = qkv[:, :lay.h + lay.kv]
            qk = torch.addcmul(qk * cos, qk.roll(hd // 2, -1), sin).to(ad)   # q and k rotated together
            qkv = qkv.to(ad)
            y = cache.attend(qk[:, :lay.h], qk[:, lay.h:], qkv[:, lay.h + lay.kv:])   # (b, h, t, hd)
            h.add_(lay.o(y.transpose(1, 2).reshape(b * t, lay.h * lay.hd).to(cd)))
            g, u = lay.gate_up(_rms(h, lay.norm2, lay.eps2, cd)).split(lay.ff, dim=-1)
            h.add_(lay.down(F.silu(g).mul_(u)))
        h = h.view(b, t, d)
        x = h[:, -1] if last is None else h[torch.arange(b, device=h.device), last]
        x = m.norm(x)
        if self._exact_head is not None:
            return self._refined_logits(x)
        return self._head_call(x.to(self.head.weight.dtype) if hasattr(self.head, "weight") else x).float()

    def _refined_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (b, V) fp32 from the bf16 head copy, the candidates for the largest recomputed from the float
        head's rows (module doc): the argmax and every logit that could exceed it are the float head's."""
        w, bias = self._exact_head
        b, k = x.shape
        low = self._low_head
        x = x.float()
        xr = x.to(torch.bfloat16)
        y = low.call(xr).float()                                                   # (b, V)
        xn = x.norm(dim=-1)
        a = (xr.float() - x).norm(dim=-1) + (k * 2.0 ** -23) * xn                  # (b,)

        def exact(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            e = (x[rows].to(w.dtype) * w[cols]).sum(-1)
            return (e + bias[cols] if bias is not None else e).to(y.dtype)

        hi, lo = y.amax(-1), y.amin(-1)          # (torch.aminmax and argmax take 10-40× amax's time here)
        bound = (a * low.wnorm_max + xn * low.delta_max + 2.0 ** -8 * torch.maximum(hi, -lo)
                 + low.bias_err_max)                                               # ≥ every e_j
        # the float argmax j* has y_j* ≥ y_k ≥ ỹ_k − e_k for k = argmax ỹ, so ỹ_j* ≥ max ỹ − 2·bound
        rows, cols = torch.nonzero(y >= (hi - 2 * bound)[:, None], as_tuple=True)
        yc = y[rows, cols]
        e = a[rows] * low.wnorm[cols] + xn[rows] * low.delta[cols] + 2.0 ** -8 * yc.abs()
        if low.bias_err is not None:
            e = e + low.bias_err[cols]
        floor = torch.full_like(hi, -torch.inf).scatter_reduce_(0, rows, yc - e, "amax")   # ≤ max y, per row
        keep = yc + e >= floor[rows]
        rows, cols = rows[keep], cols[keep]
        y[rows, cols] = exact(rows, cols)
        return y


class _LowHead:
    """A bf16 copy (`layer`, run by `call`) of a float head W, with per row j ‖W̃_j‖ (`wnorm`) and
    δ_j = ‖W̃_j − W_j‖ (`delta`) for the bound of the module doc, W̃ = layer.dequantize(), and their largest values;
    a head with a bias adds 2⁻⁸·|b_j| to e_j (`bias_err`: the bias, like the output, rounded to bf16)."""

    def __init__(self, layer: nn.Module, w: torch.Tensor):
        self.layer = layer.eval()
        self.call = packed_linear(layer.weight, layer.bias) or layer
        with torch.no_grad():
            wt = layer.dequantize().double()
            self.wnorm = wt.norm(dim=1).float()
            self.delta = (wt - w.double()).norm(dim=1).float()
        self.wnorm_max, self.delta_max = float(self.wnorm.max()), float(self.delta.max())
        bias = getattr(layer, "bias", None)
        self.bias_err = None if bias is None else 2.0 ** -8 * bias.detach().float().abs()
        self.bias_err_max = 0.0 if bias is None else float(self.bias_err.max())


def make_engine(model, tokenizer=None, hydragen: bool = True, fused: bool = True, **kw) -> Engine:
    """A FusedEngine when `fused` and `fusable(model)` agree, else the module-path Engine."""
    if fused and fusable(model) is None:
        return FusedEngine(model, tokenizer, hydragen=hydragen, **kw)
    return Engine(model, tokenizer, hydragen=hydragen)
