"""Causal self-attention: MHA / GQA / MQA, rotary positions, optional sliding window, KV cache.

Notation: b = batch, t = new tokens, s = key positions (cache + new), h = query heads,
k = key/value heads (h % k == 0), d = head dim.

State interface (shared by every token mixer, recurrent ones included):
    state = mixer.init_state(batch, max_len, device, dtype)
    y, state = mixer(x, state=state)        # state in, state out; state=None means "no cache" (training)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import ArgError, Dims, KVHeadsArg, WindowArg
from lmlab.nn.block import Component
from lmlab.registry import TOKEN_MIXERS


# --------------------------------------------------------------------------------------------- rotary
def rope_cache(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape positions.shape + (head_dim,), Llama/HF "rotate_half" layout, computed in fp32."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    ang = positions.float()[..., None] * inv  # (..., d/2)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, sign: float) -> torch.Tensor:
    """Halves x1, x2 -> (x1·c − sign·x2·s, x2·c + sign·x1·s) in four half-size ops into one output."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    out = torch.empty_like(x)
    o1, o2 = out[..., :h], out[..., h:]
    torch.mul(x1, c, out=o1).addcmul_(x2, s, value=-sign)
    torch.mul(x2, c, out=o2).addcmul_(x1, s, value=sign)
    return out


class _RoPEFn(torch.autograd.Function):
    """x·cos + rotate_half(x)·sin as a rotation of the two halves by +θ; backward rotates by −θ (the
    transpose). Saves only cos/sin, and makes two passes where the op chain makes five."""

    @staticmethod
    def forward(ctx, x, c, s):
        ctx.save_for_backward(c, s)
        return _rotate(x, c, s, 1.0)

    @staticmethod
    def backward(ctx, g):
        c, s = ctx.saved_tensors
        return _rotate(g, c, s, -1.0), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (b, heads, t, d); cos/sin: (b or 1, t, d) in the rotate_half layout (both halves equal).
    Equals `x * cos + rotate_half(x) * sin` (`naive_apply_rope`)."""
    h = x.shape[-1] // 2
    c, s = cos[:, None, :, :h].to(x.dtype), sin[:, None, :, :h].to(x.dtype)
    return _RoPEFn.apply(x, c, s)


def naive_apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Reference: the Llama formula with rotate_half."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return x * cos + rotate_half(x) * sin


# ------------------------------------------------------------------------------------------- KV cache
@dataclass
class KVCache:
    """Preallocated keys/values (b, k, max_len, d) and the number of filled positions."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, batch: int, kv_heads: int, max_len: int, head_dim: int, device=None, dtype=torch.float32):
        z = torch.zeros(batch, kv_heads, max_len, head_dim, device=device, dtype=dtype)
        return cls(z, z.clone(), 0)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        end = self.length + t
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.k.shape[2]}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: Optional[int]) -> torch.Tensor:
    """Boolean (t, s): True where query i may attend key j."""
    m = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        m &= (q_pos[:, None] - k_pos[None, :]) < window
    return m


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                    k_pos: torch.Tensor, window: Optional[int] = None) -> torch.Tensor:
    """Reference: explicit scores, mask and softmax; GQA by repeating K/V. q (b,h,t,d), k/v (b,k,s,d)."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (b, h, t, s)
    mask = causal_mask(q_pos, k_pos, window)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                   k_pos: torch.Tensor, window: Optional[int] = None) -> torch.Tensor:
    """Fast path through F.scaled_dot_product_attention (same contract as naive_attention)."""
    t, s = q.shape[2], k.shape[2]
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    if window is None and t == s:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if window is None and t == 1:
        return F.scaled_dot_product_attention(q, k, v)  # one new token sees the whole cache
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(q_pos, k_pos, window))


@TOKEN_MIXERS.register("attn")
class Attention(Component):
    """Causal self-attention with RoPE; MHA, GQA or MQA by n_kv_head; optional sliding window."""

    class Args(KVHeadsArg, WindowArg):
        """mixer_args.attn: n_kv_head (None = model.n_kv_head), window (None = model.sliding_window), bias."""

        bias: bool = False

        def check(self, dims: Dims) -> None:
            if dims.n_head % self.kv_heads(dims):
                raise ArgError("n_kv_head", f"must divide n_head={dims.n_head}")

    RESIDUAL_OUT = ("o_proj.weight",)

    def __init__(self, dims: Dims, args: Args):
        super().__init__()
        self.n_head = dims.n_head
        self.n_kv = args.kv_heads(dims)
        self.head_dim = dims.head_dim
        self.theta = dims.rope_theta
        self.window = args.window_for(dims)
        d = dims.d_model
        self.q_proj = nn.Linear(d, self.n_head * self.head_dim, bias=args.bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=args.bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=args.bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d, bias=args.bias)
        self.dropout = dims.dropout

    def project(self, x: torch.Tensor, start: int = 0, positions: Optional[torch.Tensor] = None):
        """Q (b, h, t, d), K and V (b, k, t, d), with rotary positions start.. (or `positions`) applied."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (b, h, t, d)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)   # (b, k, t, d)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        if positions is None:
            positions = torch.arange(start, start + t, device=x.device)[None]  # (1, t)
        cos, sin = rope_cache(positions, self.head_dim, self.theta)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def init_state(self, batch: int, max_len: int, device=None, dtype=torch.float32) -> KVCache:
        # A full-length cache even with a sliding window: the mask enforces the window.
        return KVCache.empty(batch, self.n_kv, max_len, self.head_dim, device, dtype)

    def forward(self, x: torch.Tensor, state: Optional[KVCache] = None,
                positions: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[KVCache]]:
        b, t, _ = x.shape
        start = state.length if state is not None else 0
        q, k, v = self.project(x, start, positions)
        attend = getattr(state, "attend", None)
        if attend is not None:  # a cache that computes attention itself (engine: padding, shared prefixes)
            y = attend(q, k, v)  # (b, h, t, d)
            y = y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)
            return F.dropout(self.o_proj(y), self.dropout, self.training), state
        if state is not None:
            k, v = state.append(k, v)
        q_pos = torch.arange(start, start + t, device=x.device)
        k_pos = torch.arange(k.shape[2], device=x.device)
        y = sdpa_attention(q, k, v, q_pos, k_pos, self.window)  # (b, h, t, d)
        y = y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)
        y = F.dropout(self.o_proj(y), self.dropout, self.training)
        return y, state

    def flops_per_token(self, context: int) -> int:
        d = self.q_proj.in_features
        proj = 2 * d * (2 * self.n_head + 2 * self.n_kv) * self.head_dim
        span = min(context, self.window) if self.window else context
        return proj + 2 * 2 * self.n_head * self.head_dim * span  # QK^T and AV
