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
        return self.down(F.silu(self.gate(x)) * self.up(x))

    def flops_per_token(self) -> int:
        return 2 * 3 * self.gate.in_features * self.gate.out_features
