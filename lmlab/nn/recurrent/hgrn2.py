"""HGRN2: gated linear RNN with outer-product state expansion (Qin et al., 2024, arXiv:2404.07904).

Notation: b = batch, t = tokens, h = heads, k = forget/query dim per head (= expand ratio E),
v = input dim per head (= d_model / h), n = chunks, c = chunk length.

Per head, with S_t a (k × v) matrix state:
    f_t = lb + (1 − lb)·σ(W_f x_t)                  forget gate, lower bound lb ∈ [0, 1) per layer
    i_t = W_i x_t,   q_t = swish(W_q x_t)
    S_t = diag(f_t)·S_{t−1} + (1 − f_t) i_tᵀ          "key" = 1 − f_t (input gate tied to forget gate)
    o_t = S_tᵀ q_t                                    (v,)
    y_t = W_o · RMSNorm(o_t)
Heads h = d_model / E, so the state has d_model·E numbers per layer while the parameter count
(W_q, W_f, W_i, W_o: four d×d matrices) does not depend on E. E = 1 makes every head a scalar
HGRN1-style gated RNN: the expand>1 vs expand=1 comparison is at equal parameters by construction.

Lower bounds: HGRN/HGRN2 (and fla's HGRN2 model) give layer l the bound γ_l = cumsum(softmax(Γ))_l − that
of layer 0, learnt jointly over layers, so lower layers forget fast and upper layers slowly; layer 0 has
bound 0. A token mixer here only sees its own layer, so we keep γ_l at the value the learnt bounds take at
initialisation (Γ = 0): γ_l = l / n_layer, a fixed buffer, increasing with depth.

Three forms, all computing the same thing (tests/test_recurrent_hgrn2.py):
    naive_hgrn2       per-step recurrence, the reference (accumulates in fp32 or wider)
    chunk_hgrn2       chunked parallel form for training: intra-chunk attention-like sum (a factorised
                      matmul, or pairwise decays exp(B_t − B_s) ≤ 1 when a chunk decays too much for the
                      factorisation to be safe), state carried across chunks
    hgrn2_step        one-token decode update of S
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lmlab.config import ArgError, ComponentArgs, Dims
from lmlab.nn.block import Component
from lmlab.nn.norm import RMSNorm
from lmlab.registry import TOKEN_MIXERS


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


class WideRMSNorm(RMSNorm):
    """RMSNorm computed in fp32 or wider (float64 stays float64, so equivalence tests can be tight)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(_acc_dtype(x))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xf.dtype)).to(x.dtype)


def naive_hgrn2(q: torch.Tensor, g: torch.Tensor, v: torch.Tensor,
                state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference recurrence. q, g (log forget gate): (b, h, t, k); v: (b, h, t, v); state (b, h, k, v)."""
    dt = _acc_dtype(q)
    q, g, v = q.to(dt), g.to(dt), v.to(dt)
    b, h, t, k = q.shape
    S = q.new_zeros(b, h, k, v.shape[-1]) if state is None else state.to(dt)
    out = []
    for i in range(t):
        f = g[:, :, i].exp()                                                 # (b, h, k)
        S = f[..., None] * S + (1 - f)[..., None] * v[:, :, i, None, :]      # (b, h, k, v)
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, i], S))
    return torch.stack(out, dim=2), S


def hgrn2_step(q: torch.Tensor, g: torch.Tensor, v: torch.Tensor,
               state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step. q, g: (b, h, 1, k); v: (b, h, 1, v); state (b, h, k, v) -> o (b, h, 1, v), state."""
    dt = _acc_dtype(q)
    f = g[:, :, 0].to(dt).exp()
    S = f[..., None] * state.to(dt) + (1 - f)[..., None] * v[:, :, 0, None, :].to(dt)
    o = torch.einsum("bhk,bhkv->bhv", q[:, :, 0].to(dt), S)
    return o[:, :, None], S


def chunk_hgrn2(q: torch.Tensor, g: torch.Tensor, v: torch.Tensor, state: Optional[torch.Tensor] = None,
                chunk: int = 32, pairwise: Optional[bool] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked parallel form, same contract as naive_hgrn2. Any t (padded up to a multiple of `chunk`).

    pairwise=None picks the fast factorised intra-chunk product unless some chunk decays by more than
    e^60 (fp32; e^600 in fp64), where exp(−B) could overflow; then the (c, c, k) pairwise form is used."""
    dt = _acc_dtype(q)
    b, h, t, k = q.shape
    dv = v.shape[-1]
    key = 1 - g.to(dt).exp()
    q, g, v = q.to(dt), g.to(dt), v.to(dt)
    pad = (-t) % chunk
    if pad:  # padded steps: g = 0 (no decay) and key = 0 (no input) leave the final state unchanged
        q, g, key, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, g, key, v))
    n, c = (t + pad) // chunk, chunk
    q, g, key = (z.view(b, h, n, c, k) for z in (q, g, key))
    v = v.view(b, h, n, c, dv)
    B = g.cumsum(dim=3)                                                      # (b, h, n, c, k) log decay from chunk start
    # intra-chunk: o_t += Σ_{s≤t} (q_t ⊙ exp(B_t − B_s) ⊙ key_s)·v_s
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    if pairwise is None:  # the factorised form is exact while exp(−B) cannot overflow within a chunk
        pairwise = bool((-B[..., -1, :]).max() > (60.0 if dt == torch.float32 else 600.0))
    if pairwise:  # (c, c, k) pairwise decays, all ≤ 1: any gate values
        diff = (B[..., :, None, :] - B[..., None, :, :]).masked_fill(~causal[..., None], float("-inf"))
        A = (q[..., :, None, :] * diff.exp() * key[..., None, :, :]).sum(-1)  # (b, h, n, c, c)
    else:         # exp(B_t − B_s) = exp(B_t)·exp(−B_s): one batched matmul
        A = ((q * B.exp()) @ (key * (-B).exp()).transpose(-1, -2)).masked_fill(~causal, 0.0)
    o = A @ v                                                                # (b, h, n, c, v)
    # chunk summaries: U_j = Σ_s (key_s ⊙ exp(B_last − B_s)) v_sᵀ, total decay exp(B_last)
    last = B[..., -1:, :]                                                    # (b, h, n, 1, k)
    U = torch.einsum("bhnsk,bhnsv->bhnkv", key * (last - B).exp(), v)        # (b, h, n, k, v)
    decay = last[..., 0, :].exp()                                            # (b, h, n, k)
    S = q.new_zeros(b, h, k, dv) if state is None else state.to(dt)
    starts = []
    for j in range(n):
        starts.append(S)
        S = decay[:, :, j, :, None] * S + U[:, :, j]
    S0 = torch.stack(starts, dim=2)                                          # (b, h, n, k, v) state entering chunk j
    o = o + torch.einsum("bhnck,bhnkv->bhncv", q * B.exp(), S0)
    return o.reshape(b, h, n * c, dv)[:, :, :t], S


@TOKEN_MIXERS.register("hgrn2")
class HGRN2(Component):
    """HGRN2 token mixer. mixer_args: expand (E, divides d_model), chunk, lower_bound, mode."""

    class Args(ComponentArgs):
        """mixer_args.hgrn2: expand (E, divides d_model), chunk, lower_bound, mode (chunk | naive)."""

        expand: int = Field(4, ge=1, description="state expansion E = forget/query dim per head")
        chunk: int = Field(32, ge=1, description="chunk length of the parallel form")
        lower_bound: bool = True
        mode: Literal["chunk", "naive"] = "chunk"

        def check(self, dims: Dims) -> None:
            if dims.d_model % self.expand:
                raise ArgError("expand", f"must divide d_model={dims.d_model}")

    RESIDUAL_OUT = ("o_proj.weight",)

    def __init__(self, dims: Dims, args: Args):
        super().__init__()
        d = dims.d_model
        self.d, self.expand, self.chunk, self.mode = d, args.expand, args.chunk, args.mode
        self.n_head = d // self.expand
        self.head_v = d // self.n_head                                        # = expand
        self.q_proj = nn.Linear(d, d, bias=False)
        self.f_proj = nn.Linear(d, d, bias=False)
        self.i_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.g_norm = WideRMSNorm(d, dims.norm_eps)
        lb = dims.layer_idx / dims.n_layer if args.lower_bound else 0.0
        self.register_buffer("lower_bound", torch.tensor(float(lb)), persistent=False)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (b, t, d) -> q, g (log forget) (b, h, t, k) and v (b, h, t, v)."""
        b, t, _ = x.shape
        q = F.silu(self.q_proj(x))
        g = F.logsigmoid(self.f_proj(x))
        lb = self.lower_bound.to(g.dtype)
        if lb > 0:  # log(lb + (1 − lb)·σ) computed stably
            g = torch.logaddexp(lb.log(), torch.log1p(-lb) + g)
        v = self.i_proj(x)
        split = lambda z, e: z.view(b, t, self.n_head, e).transpose(1, 2)  # noqa: E731
        return split(q, self.expand), split(g, self.expand), split(v, self.head_v)

    def init_state(self, batch: int, max_len: int, device=None, dtype=torch.float32) -> torch.Tensor:
        # Constant memory in max_len: the (k × v) state per head, kept in fp32 or wider.
        return torch.zeros(batch, self.n_head, self.expand, self.head_v, device=device,
                           dtype=torch.promote_types(dtype, torch.float32))

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None,
                positions: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        b, t, d = x.shape
        q, g, v = self.gates(x)
        if state is not None and t == 1:
            o, new = hgrn2_step(q, g, v, state)
        elif self.mode == "naive":
            o, new = naive_hgrn2(q, g, v, state)
        else:
            o, new = chunk_hgrn2(q, g, v, state, self.chunk)
        o = o.to(x.dtype).transpose(1, 2).reshape(b, t, d)
        y = self.o_proj(self.g_norm(o))
        return y, (new if state is not None else None)

    def flops_per_token(self, context: int = 0) -> int:
        # projections + state update and readout (≈ 2 mult-adds per state entry each)
        return 2 * 4 * self.d * self.d + 4 * self.d * self.expand
