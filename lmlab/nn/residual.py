"""Residual policies. A policy wraps one sublayer (token mixer or channel mixer) and owns its norm.

Interface (hyper-connections implement the same):
    Policy(dims, args, sublayer_idx)   args: the policy's `Args`, validated from model.residual_args
    policy(h, fn) -> (h_new, extra)   where fn(x_normed) -> (y, extra)
    Policy.expand(x, cfg) / Policy.reduce(h, cfg): called once at the ends of the network (cfg: the
    ModelConfig), so a policy can carry a different hidden representation between blocks (e.g. n residual
    streams).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from lmlab.config import ComponentArgs, Dims
from lmlab.nn.block import Component
from lmlab.nn.norm import RMSNorm
from lmlab.registry import RESIDUALS


@RESIDUALS.register("prenorm")
class PreNormResidual(Component):
    """h + f(norm(h))."""

    class Args(ComponentArgs):
        """residual_args for prenorm: none."""

    def __init__(self, dims: Dims, args: Args, sublayer_idx: int = 0):
        super().__init__()
        self.norm = RMSNorm(dims.d_model, dims.norm_eps)

    def forward(self, h: torch.Tensor, fn: Callable) -> tuple[torch.Tensor, Any]:
        y, extra = fn(self.norm(h))
        return h + y, extra

    @staticmethod
    def expand(x: torch.Tensor, cfg) -> torch.Tensor:
        return x

    @staticmethod
    def reduce(h: torch.Tensor, cfg) -> torch.Tensor:
        return h
