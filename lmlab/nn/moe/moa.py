"""JetMoE mixture of attention heads (MoA; Shen et al. 2024, after Zhang et al. 2022).

Notation: b = batch, t = tokens, d = d_model, e = attention experts, k = experts per token, m = K/V heads,
f = head dim, q-heads per token = k·m.

Each attention expert i is a pair (W_q^i: d -> m·f, W_o^i: m·f -> d). One shared projection gives K and V
(m heads). A token's router picks k experts (fp32 logits, top-k then softmax over the k): expert slot j
produces m query heads that attend over the shared K/V; the slot's attention output goes through W_o^i and
the k results are mixed by the gate weights, plus a learned output bias:
    y_t = b + Σ_j g_{t,j} · W_o^{e_j} · Attn(W_q^{e_j} x_t, K, V)
Aux loss = balance_weight · (Switch balance + z_ratio · z-loss), JetMoE's 0.01 · (balance + 0.1·z).

Registered as TOKEN_MIXERS "moa"; decoding uses the same KVCache as `attn` (K/V are shared across experts,
so the cache has only m heads).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lmlab.config import Dims, KVHeadsArg, TopK
from lmlab.nn.attention import KVCache, apply_rope, naive_attention, rope_cache, sdpa_attention
from lmlab.nn.block import Component, Init
from lmlab.nn.moe.experts import from_slots, slot_table, to_slots
from lmlab.nn.moe.routers import TopKSoftmaxTokenChoice, aux_losses
from lmlab.registry import TOKEN_MIXERS


@TOKEN_MIXERS.register("moa")
class MixtureOfAttention(Component):
    """JetMoE mixture of attention heads: k of e (W_q, W_o) experts per token over shared K/V heads."""

    class Args(KVHeadsArg):
        """mixer_args.moa: n_experts, top_k, n_kv_head (m; None = model.n_kv_head), head_dim (None = the
        model's), balance_weight, z_ratio, out_bias."""

        n_experts: int = Field(8, ge=1)
        top_k: TopK = Field(2, ge=1)
        head_dim: Optional[int] = Field(None, ge=1, description="None = d_model / n_head")
        balance_weight: float = Field(0.01, ge=0)
        z_ratio: float = Field(0.1, ge=0)
        out_bias: bool = True

    RESIDUAL_OUT = ("w_o",)

    def __init__(self, dims: Dims, args: Args):
        super().__init__()
        d, n_experts = dims.d_model, args.n_experts
        self.e, self.k = n_experts, args.top_k
        self.m = args.kv_heads(dims)
        self.f = args.head_dim or dims.head_dim
        self.theta = dims.rope_theta
        hid = self.m * self.f
        self.router = TopKSoftmaxTokenChoice(d, n_experts, TopKSoftmaxTokenChoice.Args(top_k=args.top_k))
        # Allocation only (a fixed number of draws from the RNG); values are set by reset_extra_parameters.
        self.w_q = nn.Parameter(torch.randn(n_experts, d, hid) * 0.02)            # (e, d, m·f)
        self.w_o = nn.Parameter(torch.randn(n_experts, hid, d) * 0.02)            # (e, m·f, d)
        self.kv_proj = nn.Linear(d, 2 * hid, bias=False)
        self.bias = nn.Parameter(torch.zeros(d)) if args.out_bias else None
        self.balance_weight, self.z_ratio = args.balance_weight, args.z_ratio
        self.aux_loss: Optional[torch.Tensor] = None

    def reset_extra_parameters(self, init=None) -> None:
        init = init or Init()
        init.normal_(self.w_q)
        init.normal_(self.w_o)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def init_state(self, batch: int, max_len: int, device=None, dtype=torch.float32) -> KVCache:
        return KVCache.empty(batch, self.m, max_len, self.f, device, dtype)

    def _kv_rope(self, x, state, positions):
        b, t, _ = x.shape
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        k = k.view(b, t, self.m, self.f).transpose(1, 2)                          # (b, m, t, f)
        v = v.view(b, t, self.m, self.f).transpose(1, 2)
        start = state.length if state is not None else 0
        if positions is None:
            positions = torch.arange(start, start + t, device=x.device)[None]
        cos, sin = rope_cache(positions, self.f, self.theta)
        return k, v, cos, sin, start

    def forward(self, x: torch.Tensor, state: Optional[KVCache] = None,
                positions: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[KVCache]]:
        b, t, d = x.shape
        k_, m, f = self.k, self.m, self.f
        xg = x.reshape(1, b * t, d)
        r = self.router(xg)                          # assignments ordered (slot j, token): row = j·(b·t) + token
        src, row, tok = slot_table(r, 1, b * t)
        q = from_slots(torch.bmm(to_slots(xg[0], src, self.e), self.w_q), row)    # (k·b·t, m·f)
        # Query heads ordered (kv head, slot) so sdpa's repeat_interleave pairs them with their K/V head.
        q = q.view(k_, b, t, m, f).permute(1, 3, 0, 2, 4).reshape(b, m * k_, t, f)
        kk, vv, cos, sin, start = self._kv_rope(x, state, positions)
        q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)
        if state is not None:
            kk, vv = state.append(kk, vv)
        q_pos = torch.arange(start, start + t, device=x.device)
        k_pos = torch.arange(kk.shape[2], device=x.device)
        o = sdpa_attention(q, kk, vv, q_pos, k_pos)                               # (b, m·k, t, f)
        o = o.view(b, m, k_, t, f).permute(2, 0, 3, 1, 4).reshape(k_ * b * t, m * f)  # assignment order
        ob = to_slots(o, _assignment_src(row, src.shape[0], k_ * b * t), self.e)     # (e, c, m·f)
        y = from_slots(torch.bmm(ob, self.w_o), row) * r.weight.reshape(-1, 1).to(x.dtype)
        y = x.new_zeros(b * t, d).index_add(0, tok, y).view(b, t, d)
        if self.bias is not None:
            y = y + self.bias
        aux = aux_losses(r)
        self.aux_terms = aux
        self.aux_loss = self.balance_weight * (aux["balance"] + self.z_ratio * aux["z"])
        return y, state

    def naive_forward(self, x: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reference without a cache: per token and slot, the expert's own W_q/W_o; explicit attention."""
        b, t, d = x.shape
        logits = F.linear(x.to(torch.promote_types(x.dtype, torch.float32)), self.router.proj.weight.to(
            torch.promote_types(x.dtype, torch.float32)))
        top = logits.topk(self.k, -1)
        gates = torch.softmax(top.values, -1)
        kk, vv, cos, sin, _ = self._kv_rope(x, None, positions)
        kk = apply_rope(kk, cos, sin)
        pos = torch.arange(t, device=x.device)
        y = torch.zeros_like(x)
        for j in range(self.k):
            q = torch.stack([torch.stack([x[bi, ti] @ self.w_q[top.indices[bi, ti, j]] for ti in range(t)])
                             for bi in range(b)])                                  # (b, t, m·f)
            q = apply_rope(q.view(b, t, self.m, self.f).transpose(1, 2), cos, sin)
            o = naive_attention(q, kk, vv, pos, pos).transpose(1, 2).reshape(b, t, -1)
            for bi in range(b):
                for ti in range(t):
                    y[bi, ti] += gates[bi, ti, j].to(x.dtype) * (o[bi, ti] @ self.w_o[top.indices[bi, ti, j]])
        return y + (self.bias if self.bias is not None else 0)

    def flops_per_token(self, context: int) -> int:
        d, hid = self.kv_proj.in_features, self.m * self.f
        proj = 2 * d * hid * (2 * self.k + 2) + 2 * d * self.e
        return proj + 2 * 2 * self.k * hid * context


def _assignment_src(row: torch.Tensor, n_rows: int, n: int) -> torch.Tensor:
    """Slot table keyed by assignment instead of token: slot row -> assignment index (n = empty)."""
    out = torch.full((n_rows + 1,), n, dtype=torch.long, device=row.device)
    return out.scatter(0, row, torch.arange(n, device=row.device))[:-1]
