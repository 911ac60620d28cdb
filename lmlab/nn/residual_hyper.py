"""Hyper-connections (Zhu et al., 2024, arXiv:2409.19606): n residual streams with learnt width/depth mixing.

Notation: b = batch, t = tokens, n = streams, d = d_model.

H ∈ ℝ^{n×d} per token replaces the residual vector h. Each sublayer (attention or FFN) k does
    h₀ = A_mᵀ H                      (d,)   weighted sum of streams fed to the sublayer
    y  = block(norm(h₀))             (d,)   the usual pre-norm sublayer
    H′ = B ⊗ y + A_rᵀ H              (n, d) depth connection (B ∈ ℝⁿ) + width connection (A_r ∈ ℝ^{n×n})
Static init: A_m = e_{k mod n}, A_r = I, B = 1: every stream then carries exactly the pre-norm residual
stream h (H = [h, …, h]), so the network *is* the pre-norm residual network.
Dynamic variant (DHC): [A_m | A_r] += s_α · tanh(norm(H) W_α), B += s_β · tanh(norm(H) w_β), W = 0 at init,
s = 0.01 (learnt), as in the paper's Algorithm 2.

Ends of the network: expand repeats the embedding into n streams; reduce averages the streams. The paper
sums them; the final RMSNorm removes that factor n up to its eps, and the mean keeps the init bit-identical to
the pre-norm network (streams are summed as a tree, so n equal streams give exactly n·h for n = 2^m).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field
from torch import nn

from lmlab.config import ComponentArgs, Dims
from lmlab.nn.block import Component
from lmlab.nn.norm import RMSNorm
from lmlab.registry import RESIDUALS


def _streams(cfg) -> int:
    """n of the hyper residual policy of ModelConfig `cfg`."""
    return cfg.component_args("residual", "hyper").n


def naive_hyper_connection(H: torch.Tensor, fn: Callable, norm: nn.Module, A_m: torch.Tensor, A_r: torch.Tensor,
                           B: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Reference for one token position at a time with per-token matrices. H (b, t, n, d);
    A_m (b, t, n), A_r (b, t, n, n), B (b, t, n)."""
    b, t, n, d = H.shape
    h0 = torch.zeros(b, t, d, dtype=H.dtype)
    for i in range(n):
        h0 = h0 + A_m[..., i, None] * H[:, :, i]
    y, extra = fn(norm(h0))
    out = []
    for j in range(n):
        acc = B[..., j, None] * y
        for i in range(n):
            acc = acc + A_r[..., i, j, None] * H[:, :, i]
        out.append(acc)
    return torch.stack(out, 2), extra


@RESIDUALS.register("hyper")
class HyperConnection(Component):
    """residual: hyper; residual_args: {n: streams, dynamic: bool}."""

    class Args(ComponentArgs):
        """residual_args for hyper: n (streams, the paper's expansion rate), dynamic (DHC)."""

        n: int = Field(2, ge=1, description="residual streams (expansion rate)")
        dynamic: bool = True

    def __init__(self, dims: Dims, args: Args, sublayer_idx: int = 0):
        super().__init__()
        self.n, self.dynamic = args.n, args.dynamic
        d, layer_idx = dims.d_model, dims.layer_idx
        self.norm = RMSNorm(d, dims.norm_eps)                      # the sublayer's pre-norm
        k = 2 * layer_idx + sublayer_idx                            # sublayer index in the network
        a_m = torch.zeros(self.n)
        a_m[k % self.n] = 1.0
        self.static_alpha = nn.Parameter(torch.cat([a_m[:, None], torch.eye(self.n)], 1))  # (n, 1+n) = [A_m | A_r]
        self.static_beta = nn.Parameter(torch.ones(self.n))                                 # B
        if self.dynamic:
            self.stream_norm = RMSNorm(d, dims.norm_eps)
            self.dynamic_alpha_fn = nn.Parameter(torch.zeros(d, 1 + self.n))
            self.dynamic_alpha_scale = nn.Parameter(torch.tensor(1e-2))
            self.dynamic_beta_fn = nn.Parameter(torch.zeros(d))
            self.dynamic_beta_scale = nn.Parameter(torch.tensor(1e-2))

    def reset_extra_parameters(self, init=None) -> None:
        with torch.no_grad():
            if self.dynamic:
                self.dynamic_alpha_fn.zero_()
                self.dynamic_beta_fn.zero_()

    def matrices(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """H (b, t, n, d) -> A_m (…, n), A_r (…, n, n), B (…, n); broadcast shapes when static."""
        alpha, beta = self.static_alpha.to(H.dtype), self.static_beta.to(H.dtype)
        if self.dynamic:
            Hn = self.stream_norm(H)                                             # (b, t, n, d)
            alpha = alpha + self.dynamic_alpha_scale * torch.tanh(Hn @ self.dynamic_alpha_fn.to(H.dtype))
            beta = beta + self.dynamic_beta_scale * torch.tanh(Hn @ self.dynamic_beta_fn.to(H.dtype))
        return alpha[..., 0], alpha[..., 1:], beta

    def forward(self, H: torch.Tensor, fn: Callable) -> tuple[torch.Tensor, Any]:
        A_m, A_r, B = self.matrices(H)
        h0 = torch.einsum("...n,...nd->...d", A_m, H)                            # (b, t, d)
        y, extra = fn(self.norm(h0))
        H_new = B[..., None] * y[..., None, :] + torch.einsum("...ij,...id->...jd", A_r, H)
        return H_new, extra

    @staticmethod
    def expand(x: torch.Tensor, cfg) -> torch.Tensor:
        """(b, t, d) -> (b, t, n, d): n copies."""
        return x[..., None, :].expand(*x.shape[:-1], _streams(cfg), x.shape[-1]).contiguous()

    @staticmethod
    def reduce(H: torch.Tensor, cfg) -> torch.Tensor:
        """(b, t, n, d) -> (b, t, d): mean of streams, summed as a balanced tree."""
        n = H.shape[-2]
        while H.shape[-2] > 1:
            m = H.shape[-2]
            half = m // 2
            rest = H[..., 2 * half:, :]
            H = torch.cat([H[..., :half, :] + H[..., half:2 * half, :], rest], -2)
        return H[..., 0, :] / n
