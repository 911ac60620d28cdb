"""Griffin / RecurrentGemma recurrent block with the RG-LRU (De et al., 2024, arXiv:2402.19427).

Notation: b = batch, t = tokens, d = d_model, w = lru width, h = gate blocks (heads), c = conv width.

RG-LRU, per channel:
    gate_x = σ(W_x x_t + b_x),  gate_a = σ(W_a x_t + b_a)          W_x, W_a block-diagonal (h blocks)
    log a_t = −8 · gate_a · softplus(Λ)                             a_t ∈ (0, 1)
    h_t = a_t ⊙ h_{t−1} + √(1 − a_t²) ⊙ (gate_x ⊙ x_t)
Λ is initialised as in recurrentgemma: a₀ = exp(−softplus(Λ)) with a₀² ~ U[0.9², 0.999²], so a₀ ∈ [0.9, 0.999]
(a_t = a₀^(8·gate_a)).
√(1 − a²) has an unbounded derivative at a → 1; its backward is clipped to at most 1000 (SqrtBoundDerivative).
At a document start (position 0) the state resets: a := 0 and the multiplier := 1, and the temporal conv does
not look across the boundary.

Recurrent block:  y = W_out( GeLU(W_y x) ⊙ RG-LRU(Conv1D_c(W_x' x)) ),  conv width c = 4.

Scans (all equal, tests/test_recurrent_rglru.py):
    naive_linear_scan   the readable per-step loop with an fp32 accumulator (recurrentgemma's rnn_scan)
    linear_scan         Hillis–Steele associative scan over (a, x) pairs: log2(t) vectorised steps, out of
                        place (autograd-friendly); products of a ≤ 1 never overflow
Decode carries (h, last c−1 conv inputs, position): constant memory in the context length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lmlab.config import ArgError, ComponentArgs, Dims, one_of
from lmlab.nn.block import Component
from lmlab.registry import TOKEN_MIXERS

MAX_SQRT_GRADIENT = 1000.0


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


class SqrtBoundDerivative(torch.autograd.Function):
    """√x with the derivative 1/(2√x) clipped at MAX_SQRT_GRADIENT (stable near x = 0 in low precision)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad / torch.sqrt(torch.clip(4.0 * x, min=1 / MAX_SQRT_GRADIENT ** 2))


# ------------------------------------------------------------------------------------------------ scans
def naive_linear_scan(a: torch.Tensor, x: torch.Tensor,
                      h0: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = a_t·h_{t−1} + x_t. a, x: (b, t, w); h0 (b, w). Returns y (b, t, w) in x's dtype, h_T (acc dtype)."""
    dt = _acc_dtype(x)
    h = x.new_zeros(x.shape[0], x.shape[2], dtype=dt) if h0 is None else h0.to(dt)
    ys = []
    for t in range(x.shape[1]):
        h = a[:, t].to(dt) * h + x[:, t].to(dt)
        ys.append(h)
    return torch.stack(ys, 1).to(x.dtype), h


def linear_scan(a: torch.Tensor, x: torch.Tensor,
                h0: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Associative (Hillis–Steele) scan, same contract as naive_linear_scan.

    Pairs compose as (a₁, x₁) ∘ (a₂, x₂) = (a₁a₂, a₂x₁ + x₂); after the step with offset k every position
    holds the composition of the 2k inputs ending there.
    """
    dt = _acc_dtype(x)
    a, y = a.to(dt), x.to(dt)
    if h0 is not None:  # fold the initial state into the first input
        y = torch.cat([y[:, :1] + a[:, :1] * h0.to(dt)[:, None], y[:, 1:]], 1)
    t, k = y.shape[1], 1
    while k < t:
        y = torch.cat([y[:, :k], y[:, k:] + a[:, k:] * y[:, :-k]], 1)
        a = torch.cat([a[:, :k], a[:, k:] * a[:, :-k]], 1)
        k *= 2
    return y.to(x.dtype), y[:, -1]


SCANS = {"naive": naive_linear_scan, "scan": linear_scan}


# ------------------------------------------------------------------------------------------------ layers
class BlockDiagonalLinear(nn.Module):
    """x (…, h·i) -> (…, h·i) with one (i × i) matrix per block, plus bias."""

    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.blocks, self.bw = blocks, width // blocks
        self.w = nn.Parameter(torch.randn(blocks, self.bw, self.bw) / math.sqrt(self.bw))
        self.b = nn.Parameter(torch.zeros(blocks, self.bw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.unflatten(-1, (self.blocks, self.bw))                            # (…, h, i)
        return (torch.einsum("...hi,hij->...hj", xs, self.w) + self.b).flatten(-2)


def segment_ids(positions: torch.Tensor) -> torch.Tensor:
    """Document index of each token: a new document starts wherever the position is 0."""
    return torch.cumsum(positions == 0, dim=-1)


def naive_conv1d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seg: Optional[torch.Tensor] = None,
                 cache: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal depthwise conv, one output at a time. x (b, t, w); w (c, w) with w[c−1] on the current token;
    cache (b, c−1, w) previous inputs; seg (b, (c−1)+t) segment ids of cache+x (no mixing across ids)."""
    c = w.shape[0]
    b, t, width = x.shape
    prev = cache if cache is not None else x.new_zeros(b, c - 1, width)
    xx = torch.cat([prev.to(x.dtype), x], 1)                                   # (b, c−1+t, w)
    out = []
    for i in range(t):
        acc = bias.expand(b, width).clone()
        for j in range(c):  # input at absolute index i + j, weight w[j]
            term = xx[:, i + j] * w[j]
            if seg is not None:
                term = term * (seg[:, i + j] == seg[:, i + c - 1]).to(x.dtype)[:, None]
            acc = acc + term
        out.append(acc)
    return torch.stack(out, 1)


def conv1d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seg: Optional[torch.Tensor] = None,
           cache: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Vectorised twin of naive_conv1d: c shifted, masked multiply-adds over the whole sequence."""
    c = w.shape[0]
    b, t, width = x.shape
    prev = cache if cache is not None else x.new_zeros(b, c - 1, width)
    xx = torch.cat([prev.to(x.dtype), x], 1)
    out = bias.expand(b, t, width)
    for j in range(c):
        term = xx[:, j:j + t] * w[j]
        if seg is not None:
            term = term * (seg[:, j:j + t] == seg[:, c - 1:]).to(x.dtype)[..., None]
        out = out + term
    return out


@dataclass
class RGLRUState:
    h: torch.Tensor        # (b, w) recurrent state, fp32 or wider
    conv: torch.Tensor     # (b, c−1, w) last conv inputs
    length: int = 0        # tokens seen (next default position)


@TOKEN_MIXERS.register("rglru")
class RecurrentBlock(Component):
    """Griffin's recurrent block as a token mixer. mixer_args: lru_width, heads, conv_width, scan, doc_reset."""

    class Args(ComponentArgs):
        """mixer_args.rglru: lru_width (None = d_model), heads (gate blocks; None = n_head), conv_width,
        scan (naive | scan), doc_reset."""

        lru_width: Optional[int] = Field(None, ge=1, description="RG-LRU width; None = d_model")
        heads: Optional[int] = Field(None, ge=1, description="gate blocks; None = model.n_head")
        conv_width: int = Field(4, ge=1, description="temporal conv width")
        scan: Annotated[str, one_of(lambda: SCANS)] = "scan"
        doc_reset: bool = True

        def check(self, dims: Dims) -> None:
            w = self.lru_width or dims.d_model
            if w % (self.heads or dims.n_head):
                raise ArgError("heads", f"must divide lru_width={w}")

    RESIDUAL_OUT = ("linear_out.weight",)

    def __init__(self, dims: Dims, args: Args):
        super().__init__()
        d = dims.d_model
        w = args.lru_width or d
        heads = args.heads or dims.n_head
        self.width, self.conv_width, self.scan, self.doc_reset = w, args.conv_width, args.scan, args.doc_reset
        conv_width = args.conv_width
        self.linear_y = nn.Linear(d, w)
        self.linear_x = nn.Linear(d, w)
        self.linear_out = nn.Linear(w, d)
        self.conv_w = nn.Parameter(torch.randn(conv_width, w) * math.sqrt(0.01 / conv_width))
        self.conv_b = nn.Parameter(torch.zeros(w))
        self.input_gate = BlockDiagonalLinear(w, heads)
        self.a_gate = BlockDiagonalLinear(w, heads)
        self.a_param = nn.Parameter(torch.empty(w))
        self.reset_extra_parameters()

    def reset_extra_parameters(self, init=None) -> None:
        """Λ such that a = exp(−softplus(Λ)) has a² ~ U[0.9², 0.999²] (recurrentgemma's rnn_param_init)."""
        with torch.no_grad():
            a2 = torch.empty_like(self.a_param).uniform_(0.9 ** 2 + 1e-8, 0.999 ** 2 + 1e-8)
            self.a_param.copy_(torch.log(torch.expm1(-0.5 * a2.log())))  # softplus⁻¹(−log a)

    def init_state(self, batch: int, max_len: int, device=None, dtype=torch.float32) -> RGLRUState:
        return RGLRUState(h=torch.zeros(batch, self.width, device=device, dtype=torch.promote_types(dtype, torch.float32)),
                          conv=torch.zeros(batch, self.conv_width - 1, self.width, device=device, dtype=dtype))

    def rg_lru(self, x: torch.Tensor, reset: torch.Tensor,
               h0: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """x (b, t, w), reset (b, t) bool -> y (b, t, w), h_T."""
        gate_x = torch.sigmoid(self.input_gate(x))
        gate_a = torch.sigmoid(self.a_gate(x))
        log_a = -8.0 * gate_a * F.softplus(self.a_param)
        a = torch.exp(log_a)
        mult = SqrtBoundDerivative.apply(1 - torch.exp(2 * log_a))
        r = reset[..., None]
        mult = torch.where(r, torch.ones_like(mult), mult)
        a = torch.where(r, torch.zeros_like(a), a)
        return SCANS[self.scan](a, x * gate_x * mult, h0)

    def forward(self, x: torch.Tensor, state: Optional[RGLRUState] = None,
                positions: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[RGLRUState]]:
        b, t, _ = x.shape
        start = state.length if state is not None else 0
        if positions is None:
            positions = torch.arange(start, start + t, device=x.device)[None].expand(b, t)
        positions = positions.expand(b, t)
        y_branch = F.gelu(self.linear_y(x), approximate="tanh")
        x_proj = self.linear_x(x)                                             # (b, t, w)
        seg = None
        if self.doc_reset:
            reset = positions == 0
            # the cached inputs belong to the previous document (id 0); new ids count starts from 0 too
            seg = torch.cat([torch.zeros(b, self.conv_width - 1, dtype=torch.long, device=x.device),
                             segment_ids(positions)], 1)
        else:
            reset = torch.zeros(b, t, dtype=torch.bool, device=x.device)
        u = conv1d(x_proj, self.conv_w, self.conv_b, seg, state.conv if state is not None else None)
        h, h_last = self.rg_lru(u, reset, state.h if state is not None else None)
        y = self.linear_out(h * y_branch)
        if state is None:
            return y, None
        xs = torch.cat([state.conv, x_proj.to(state.conv.dtype)], 1)[:, -(self.conv_width - 1):]
        return y, RGLRUState(h=h_last, conv=xs, length=start + t)

    def flops_per_token(self, context: int = 0) -> int:
        d, w = self.linear_x.in_features, self.width
        return 2 * 3 * d * w + 2 * 2 * w * self.input_gate.bw + 2 * self.conv_width * w + 10 * w
