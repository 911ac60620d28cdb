"""Expert FFNs and the dispatch/combine that moves tokens to them.

Notation: g = routing groups, s = tokens per group, e = experts, c = capacity (slots per expert),
d = model dim, h = expert hidden dim, n = assignments per group, N = rows handed to the experts.

Fast path (`dispatch_combine`): each kept assignment (token, expert, slot) gets a row of an expert-major
buffer; one `index_select` fills it, the experts run on it, and one `index_add` adds the weighted outputs
back to the tokens (each row's combine weight scattered into a per-row vector). No Python loop over tokens.
  - fixed capacity: the buffer is the padded slot table (e, g·c, d), every expert at once with `torch.bmm`;
    shapes are static given c, so torch.compile can trace it. Empty slots read token 0 with weight 0.
  - dropless (capacity = busiest expert's load): no padding; the rows are packed expert by expert and each
    expert runs one `mm` on its contiguous segment (a grouped GEMM), so the layer does the FLOPs of the
    assignments only. The segment lengths are read on the host (one sync, as the dropless capacity is).
    The packed experts are one autograd Function (`_GroupedSwiGLU`) whose per-expert `mm`s write into
    shared buffers, forward and backward.
Reference (`naive_dispatch_combine`): loop over tokens and over the (expert, slot) entries of the dense
D/C tensors, run the expert on that one token vector, accumulate C·f_e(x).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.nn.moe.routers import Routing


def _mm(x: torch.Tensor, w: torch.Tensor, counts: list[int], acc: torch.Tensor | None = None) -> torch.Tensor:
    """Per-expert x_i @ w_i: x (N, p) packed in segments of counts[i] rows, w (e, p, q) -> (N, q); with `acc`
    the products are added into acc in place (no temporary)."""
    out = x.new_empty(x.shape[0], w.shape[-1]) if acc is None else acc
    start = 0
    for i, m in enumerate(counts):
        if m:
            if acc is None:
                torch.mm(x[start:start + m], w[i], out=out[start:start + m])
            else:
                out[start:start + m].addmm_(x[start:start + m], w[i])
        start += m
    return out


def _mm_tn(x: torch.Tensor, y: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Per-expert x_iᵀ @ y_i -> (e, p, q) (weight gradients; an expert with no rows gets zeros)."""
    out = x.new_zeros(len(counts), x.shape[-1], y.shape[-1])
    start = 0
    for i, m in enumerate(counts):
        if m:
            torch.mm(x[start:start + m].t(), y[start:start + m], out=out[i])
        start += m
    return out


class _GroupedSwiGLU(torch.autograd.Function):
    """Packed rows, expert i on its segment of counts[i] rows: y_i = (silu(x_i W_gate,i) ⊙ x_i W_up,i) W_down,i.

    Forward and backward by hand so every per-expert `mm` writes into one preallocated buffer (autograd over
    a Python loop would allocate per expert and pay a `cat` each way). Under autocast the matmuls run in the
    autocast dtype (cast explicitly, autocast off inside); the engine casts the returned gradients back to
    the inputs' dtypes."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down, counts):
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        with torch.autocast(dev, enabled=False):
            x, w_gate, w_up, w_down = (t.to(dt) for t in (x, w_gate, w_up, w_down))
            a, b = _mm(x, w_gate, counts), _mm(x, w_up, counts)                 # (N, h)
            y = _mm(F.silu(a).mul_(b), w_down, counts)                          # (N, d)
        ctx.save_for_backward(x, w_gate, w_up, w_down, a, b)                    # silu(a)·b recomputed
        ctx.counts = counts
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, w_gate, w_up, w_down, a, b = ctx.saved_tensors
        counts, need = ctx.counts, ctx.needs_input_grad
        with torch.autocast(gy.device.type, enabled=False):
            gy = gy.to(x.dtype).contiguous()
            sa = F.silu(a)
            g_down = _mm_tn(sa * b, gy, counts) if need[3] else None              # (e, h, d)
            g_act = _mm(gy, w_down.transpose(1, 2), counts)                          # (N, h)
            g_b = sa.mul_(g_act)                                                          # in sa's buffer
            g_a = torch.ops.aten.silu_backward.grad_input(g_act.mul_(b), a, grad_input=g_act)  # in g_act's
            gx = None
            if need[0]:
                gx = _mm(g_b, w_up.transpose(1, 2), counts, acc=_mm(g_a, w_gate.transpose(1, 2), counts))
            g_gate = _mm_tn(x, g_a, counts) if need[1] else None
            g_up = _mm_tn(x, g_b, counts) if need[2] else None
        return gx, g_gate, g_up, g_down, None


class SwiGLUExperts(nn.Module):
    """e independent SwiGLU FFNs stored as stacked weights (e, d, h), (e, d, h), (e, h, d)."""

    def __init__(self, n_experts: int, d: int, h: int, std: float = 0.02, out_std: float | None = None):
        super().__init__()
        self.n_experts, self.d, self.h = n_experts, d, h
        self.w_gate = nn.Parameter(torch.randn(n_experts, d, h) * std)
        self.w_up = nn.Parameter(torch.randn(n_experts, d, h) * std)
        self.w_down = nn.Parameter(torch.randn(n_experts, h, d) * (out_std or std))
        self._std, self._out_std = std, out_std

    def reset_extra_parameters(self, init=None) -> None:
        """N(0, ·) for the three stacks in a fixed order: `init` (the decoder's rule, lmlab.nn.block.Init,
        which knows w_down is a residual output of the MoE layer) or, standalone, the constructor's stds."""
        if init is None:
            for w in (self.w_gate, self.w_up):
                nn.init.normal_(w, 0.0, self._std)
            nn.init.normal_(self.w_down, 0.0, self._out_std or self._std)
            return
        for w in (self.w_gate, self.w_up, self.w_down):
            init.normal_(w)

    def forward(self, xb: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
        """xb (e, m, d) -> (e, m, d): expert i applied to the m rows of buffer i; or, with `counts`, xb (N, d)
        packed expert by expert (expert i owns the next counts[i] rows) -> (N, d)."""
        if counts is None:
            a = torch.bmm(xb, self.w_gate)                   # (e, m, h)
            b = torch.bmm(xb, self.w_up)
            return torch.bmm(F.silu(a) * b, self.w_down)      # (e, m, d)
        if len(counts) != self.n_experts or sum(counts) != xb.shape[0]:
            raise ValueError(f"counts {counts} must give one segment per expert ({self.n_experts}) covering "
                             f"the {xb.shape[0]} rows")
        return _GroupedSwiGLU.apply(xb, self.w_gate, self.w_up, self.w_down, counts)

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
    e, c = r.n_experts, r.capacity
    if g * s == 0:
        return x.new_zeros(g, s, d)
    grp = torch.arange(g, device=x.device)[:, None]
    tok = (r.token + grp * s).reshape(-1)                                      # (g·n,) flat token
    if r.dropless:
        # Packed rows: expert-major, then group, then slot; expert i owns a contiguous segment.
        key = torch.where(r.valid, r.expert * g + grp, e * g).reshape(-1)
        per = torch.bincount(key, minlength=e * g + 1)[: e * g]                     # (e·g,) kept per (expert, group)
        start = per.cumsum(0) - per
        pos = start[key.clamp(max=e * g - 1)] + r.slot.reshape(-1)
        counts = per.view(e, g).sum(1).tolist()
        rows = sum(counts)
    else:
        counts, rows = None, e * g * c                                          # padded slot table (e, g·c)
        pos = ((r.expert * g + grp) * c + r.slot).reshape(-1)
    pos = torch.where(r.valid.reshape(-1), pos, rows)                          # dropped -> spare row `rows`
    src = torch.zeros(rows + 1, dtype=torch.long, device=x.device).scatter_(0, pos, tok)[:rows]
    w_row = r.weight.new_zeros(rows + 1).scatter(0, pos, r.weight.reshape(-1))[:rows]   # 0 on empty slots
    xb = x.reshape(g * s, d).index_select(0, src)                               # (rows, d); empty slots read token 0
    yb = experts(xb if counts is not None else xb.view(e, g * c, d), counts).reshape(rows, d)
    yb = yb.to(x.dtype) * w_row[:, None].to(x.dtype)
    return x.new_zeros(g * s, d).index_add(0, src, yb).view(g, s, d)


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
