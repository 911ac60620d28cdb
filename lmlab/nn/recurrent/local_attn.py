"""Griffin's local (sliding-window) MQA attention with linear cost in length and a bounded decode cache.

Notation: b = batch, h = query heads, k = kv heads (Griffin: 1), t = new tokens, c = cached keys (≤ W − 1),
W = window, n = query blocks of W tokens, d = head dim.

Query at position p attends keys at positions (p − W, p] (the same window rule as `attn` with `window: W`).
The plain `attn` mixer enforces the window with a (t × t) mask (quadratic memory) and keeps a full-length KV
cache. Here queries are cut into blocks of W; block j only needs keys of blocks j−1 and j, so the score
tensor is (n, W, 2W): O(t·W). Decoding keeps only the last W − 1 keys and values, so memory is constant in
the context length. `naive_attention(..., window=W)` in lmlab.nn.attention is the reference (tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from lmlab.nn.attention import Attention
from lmlab.registry import TOKEN_MIXERS


@dataclass
class WindowKV:
    k: torch.Tensor       # (b, k, c, d) the last c ≤ W − 1 rotated keys
    v: torch.Tensor       # (b, k, c, d)
    length: int = 0       # tokens seen so far (position of the next token)


def blocked_local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """q (b, h, t, d); k, v (b, k, c + t, d) whose last t rows are the queries' own keys and first c rows
    (c ≤ W − 1) precede them. Returns (b, h, t, d)."""
    b, h, t, d = q.shape
    c = k.shape[2] - t
    W = window
    rep = h // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    pad_q = (-t) % W
    n = (t + pad_q) // W
    qb = F.pad(q, (0, 0, 0, pad_q)).view(b, h, n, W, d)                     # (b, h, n, W, d)
    # keys left-padded to W − c so that block j of queries needs key rows [jW, (j+2)W)
    kp = F.pad(k, (0, 0, W - c, pad_q))                                      # (b, h, (n+1)W, d)
    vp = F.pad(v, (0, 0, W - c, pad_q))
    kb = kp.unfold(2, 2 * W, W).transpose(-1, -2)                            # (b, h, n, 2W, d)
    vb = vp.unfold(2, 2 * W, W).transpose(-1, -2)
    r = torch.arange(W, device=q.device)[:, None]
    s = torch.arange(2 * W, device=q.device)[None, :]
    rel = (s > r) & (s <= r + W)                                             # (W, 2W) within the window, causal
    real = (torch.arange(n, device=q.device)[:, None] * W + s) >= (W - c)    # (n, 2W) not left padding
    mask = rel[None] & real[:, None, :]                                      # (n, W, 2W)
    y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)           # (b, h, n, W, d)
    return y.reshape(b, h, n * W, d)[:, :, :t]


@TOKEN_MIXERS.register("local_attn")
class LocalAttention(Attention):
    """mixer_args: window (default 1024), n_kv_head (default 1 = MQA, as Griffin)."""

    class Args(Attention.Args):
        """mixer_args.local_attn: window (default 1024), n_kv_head (default 1 = MQA, as Griffin; None = the
        model's), bias."""

        window: int = Field(1024, ge=1, description="sliding window (keys at positions (p - window, p])")
        n_kv_head: Optional[int] = Field(1, ge=1, description="K/V heads; None = model.n_kv_head")

    def init_state(self, batch: int, max_len: int, device=None, dtype=torch.float32) -> WindowKV:
        z = torch.zeros(batch, self.n_kv, 0, self.head_dim, device=device, dtype=dtype)
        return WindowKV(z, z.clone(), 0)

    def forward(self, x: torch.Tensor, state: Optional[WindowKV] = None,
                positions: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[WindowKV]]:
        b, t, _ = x.shape
        start = state.length if state is not None else 0
        q, k, v = self.project(x, start, positions)  # (b, h, t, d), (b, k, t, d) ×2, rotary applied
        if state is not None:
            k = torch.cat([state.k.to(k.dtype), k], 2)
            v = torch.cat([state.v.to(v.dtype), v], 2)
        if t == 1:  # decode: every cached key is inside the window
            rep = self.n_head // self.n_kv
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))
        else:
            y = blocked_local_attention(q, k, v, self.window)
        y = y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)
        y = F.dropout(self.o_proj(y), self.dropout, self.training)
        if state is None:
            return y, None
        keep = self.window - 1
        return y, WindowKV(k[:, :, k.shape[2] - min(keep, k.shape[2]):], v[:, :, v.shape[2] - min(keep, v.shape[2]):],
                           start + t)
