"""SwiGLU channel mixer: W_down(silu(W_gate x) ⊙ W_up x)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.registry import CHANNEL_MIXERS


@CHANNEL_MIXERS.register("swiglu")
class SwiGLU(nn.Module):
    """SwiGLU feed-forward (Llama)."""

    def __init__(self, cfg, layer_idx: int = 0, d_ff: int | None = None, bias: bool = False):
        super().__init__()
        d, h = cfg.d_model, d_ff or cfg.ffn_hidden
        self.gate = nn.Linear(d, h, bias=bias)
        self.up = nn.Linear(d, h, bias=bias)
        self.down = nn.Linear(h, d, bias=bias)
        self.down._is_residual_out = True  # scaled init, see models/decoder.py

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = type(self.gate) is nn.Linear and type(self.up) is nn.Linear and self.gate.bias is None
        if plain and self.training and torch.is_grad_enabled():
            # training: one GEMM against the stacked gate/up weights (decode and adapters use separate calls)
            g, u = F.linear(x, torch.cat([self.gate.weight, self.up.weight])).chunk(2, dim=-1)
        else:
            g, u = self.gate(x), self.up(x)
        return self.down(F.silu(g) * u)

    def flops_per_token(self) -> int:
        return 2 * 3 * self.gate.in_features * self.gate.out_features
