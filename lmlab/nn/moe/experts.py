"""Expert FFNs and the dispatch/combine that moves tokens to them.

Notation: g = routing groups, s = tokens per group, e = experts, c = capacity (slots per expert),
d = model dim, h = expert hidden dim, n = assignments per group.

Fast path (`dispatch_combine`): the router's assignments (token, expert, slot) index a slot table of
e·g·c rows; one gather fills the expert buffers (e, g·c, d), one batched matmul per weight runs every
expert at once (torch.bmm), and one index_add scatters the weighted outputs back to tokens. No Python loop
over tokens or experts; shapes are static given c, so torch.compile can trace it.
Reference (`naive_dispatch_combine`): loop over tokens and over the (expert, slot) entries of the dense
D/C tensors, run the expert on that one token vector, accumulate C·f_e(x).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.nn.moe.routers import Routing


class SwiGLUExperts(nn.Module):
    """e independent SwiGLU FFNs stored as stacked weights (e, d, h), (e, d, h), (e, h, d)."""

    def __init__(self, n_experts: int, d: int, h: int, std: float = 0.02, out_std: float | None = None):
        super().__init__()
        self.n_experts, self.d, self.h = n_experts, d, h
        self.w_gate = nn.Parameter(torch.randn(n_experts, d, h) * std)
        self.w_up = nn.Parameter(torch.randn(n_experts, d, h) * std)
        self.w_down = nn.Parameter(torch.randn(n_experts, h, d) * (out_std or std))
        self._std, self._out_std = std, out_std

    def reset_extra_parameters(self, std: float | None = None, out_std: float | None = None) -> None:
        std = std or self._std
        for w in (self.w_gate, self.w_up):
            nn.init.normal_(w, 0.0, std)
        nn.init.normal_(self.w_down, 0.0, out_std or self._out_std or std)

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        """xb (e, m, d) -> (e, m, d): expert i applied to the m rows of buffer i."""
        a = torch.bmm(xb, self.w_gate)                       # (e, m, h)
        b = torch.bmm(xb, self.w_up)
        return torch.bmm(F.silu(a) * b, self.w_down)          # (e, m, d)

    def one(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Expert i on a single vector x (d,) — for the naive twins."""
        return (F.silu(x @ self.w_gate[i]) * (x @ self.w_up[i])) @ self.w_down[i]

    def active_params_per_token(self, k: float) -> float:
        return k * 3 * self.d * self.h


def slot_table(r: Routing, g: int, s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> src (e·g·c,) token feeding each slot (g·s = empty), row (g·n,) slot of each assignment
    (e·g·c = dropped), tok (g·n,) flat token of each assignment."""
    e, c = r.n_experts, r.capacity
    rows = e * g * c
    grp = torch.arange(g, device=r.token.device)[:, None]
    # Expert-major rows, so each expert's g·c slots are contiguous.
    row = (r.expert * g + grp) * c + r.slot                             # (g, n)
    row = torch.where(r.valid, row, torch.full_like(row, rows)).reshape(-1)
    tok = (r.token + grp * s).reshape(-1)
    src = torch.full((rows + 1,), g * s, dtype=torch.long, device=row.device)
    src = src.scatter(0, row, tok)[:rows]
    return src, row, tok


def to_slots(x: torch.Tensor, src: torch.Tensor, e: int) -> torch.Tensor:
    """x (g·s, d) -> expert buffers (e, g·c, d); empty slots hold zeros."""
    x_ext = torch.cat([x, x.new_zeros(1, x.shape[-1])], 0)
    return x_ext[src].view(e, -1, x.shape[-1])


def from_slots(yb: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Expert outputs (e, g·c, d') -> one row per assignment (g·n, d'); dropped assignments get zeros."""
    yf = yb.reshape(-1, yb.shape[-1])
    return torch.cat([yf, yf.new_zeros(1, yf.shape[-1])], 0)[row]


def dispatch_combine(x: torch.Tensor, r: Routing, experts: SwiGLUExperts) -> torch.Tensor:
    """x (g, s, d), routing in index form -> y (g, s, d) = Σ_{kept (e,c)} w · f_e(x_token)."""
    g, s, d = x.shape
    src, row, tok = slot_table(r, g, s)
    yb = experts(to_slots(x.reshape(g * s, d), src, r.n_experts))     # (e, g·c, d)
    contrib = from_slots(yb, row) * r.weight.reshape(-1, 1).to(yb.dtype)
    y = x.new_zeros(g * s, d).index_add(0, tok, contrib.to(x.dtype))
    return y.view(g, s, d)


def naive_dispatch_combine(x: torch.Tensor, D: torch.Tensor, C: torch.Tensor, experts: SwiGLUExperts) -> torch.Tensor:
    """Token loop over the dense dispatch D (g,s,e,c) / combine C (g,s,e,c)."""
    g, s, d = x.shape
    out = []
    for gi in range(g):
        for i in range(s):
            y = x.new_zeros(d)
            for ex, c in D[gi, i].nonzero().tolist():
                y = y + C[gi, i, ex, c].to(x.dtype) * experts.one(ex, x[gi, i])
            out.append(y)
    return torch.stack(out).view(g, s, d)


def soft_dispatch_combine(x: torch.Tensor, D: torch.Tensor, C: torch.Tensor, experts: SwiGLUExperts) -> torch.Tensor:
    """Soft MoE: slots x̃ = Dᵀx (each a convex mix of tokens), experts on their p slots, y = C·ỹ."""
    g, s, e, p = D.shape
    xs = torch.einsum("gsep,gsd->egpd", D.to(x.dtype), x).reshape(e, g * p, -1)   # (e, g·p, d)
    ys = experts(xs).view(e, g, p, -1)
    return torch.einsum("gsep,egpd->gsd", C.to(x.dtype), ys)


def naive_soft_dispatch_combine(x: torch.Tensor, D: torch.Tensor, C: torch.Tensor, experts: SwiGLUExperts) -> torch.Tensor:
    g, s, e, p = D.shape
    out = []
    for gi in range(g):
        slot_out = {}
        for ex in range(e):
            for j in range(p):
                xt = sum(D[gi, i, ex, j].to(x.dtype) * x[gi, i] for i in range(s))
                slot_out[ex, j] = experts.one(ex, xt)
        for i in range(s):
            out.append(sum(C[gi, i, ex, j].to(x.dtype) * slot_out[ex, j] for ex in range(e) for j in range(p)))
    return torch.stack(out).view(g, s, -1)


def loop_dispatch_combine(x: torch.Tensor, r: Routing, experts: SwiGLUExperts) -> torch.Tensor:
    """Alternative fast path: a Python loop over experts (not tokens), each with its own gathered rows.
    Kept for the benchmark, which decides whether it beats the batched slot table."""
    g, s, d = x.shape
    tok = (r.token + torch.arange(g, device=x.device)[:, None] * s).reshape(-1)
    ex, w, valid = r.expert.reshape(-1), r.weight.reshape(-1), r.valid.reshape(-1)
    y = x.new_zeros(g * s, d)
    xf = x.reshape(g * s, d)
    for i in range(r.n_experts):
        sel = (valid & (ex == i)).nonzero().squeeze(-1)
        if sel.numel() == 0:
            continue
        t = tok[sel]
        h = experts.one(i, xf[t])
        y = y.index_add(0, t, h * w[sel, None].to(h.dtype))
    return y.view(g, s, d)


def dense_flops(d: int, h: int) -> int:
    return 2 * 3 * d * h


__all__ = ["SwiGLUExperts", "slot_table", "to_slots", "from_slots", "dispatch_combine", "naive_dispatch_combine", "soft_dispatch_combine",
           "naive_soft_dispatch_combine", "loop_dispatch_combine", "dense_flops"]
