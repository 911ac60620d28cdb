"""SwiGLU channel mixer: W_down(silu(W_gate x) ⊙ W_up x)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lmlab.config import ComponentArgs, Dims
from lmlab.nn.block import Component
from lmlab.registry import CHANNEL_MIXERS


@CHANNEL_MIXERS.register("swiglu")
class SwiGLU(Component):
    """SwiGLU feed-forward (Llama)."""

    class Args(ComponentArgs):
        """ffn_args.swiglu: d_ff (hidden width; None = model.d_ff), bias."""

        d_ff: Optional[int] = Field(None, ge=1, description="hidden width; None = model.d_ff")
        bias: bool = False

    RESIDUAL_OUT = ("down.weight",)

    def __init__(self, dims: Dims, args: Args):
        super().__init__()
        d, h = dims.d_model, args.d_ff or dims.ffn_hidden
        self.gate = nn.Linear(d, h, bias=args.bias)
        self.up = nn.Linear(d, h, bias=args.bias)
        self.down = nn.Linear(h, d, bias=args.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))

    def flops_per_token(self) -> int:
        return 2 * 3 * self.gate.in_features * self.gate.out_features
