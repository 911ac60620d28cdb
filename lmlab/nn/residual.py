"""Residual policies. A policy wraps one sublayer (token mixer or channel mixer) and owns its norm.

Interface (hyper-connections implement the same):
    policy(h, fn) -> (h_new, extra)   where fn(x_normed) -> (y, extra)
    Policy.expand(x, cfg) / Policy.reduce(h, cfg): called once at the ends of the network, so a policy
    can carry a different hidden representation between blocks (e.g. n residual streams).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from lmlab.nn.norm import RMSNorm
from lmlab.registry import RESIDUALS


@RESIDUALS.register("prenorm")
class PreNormResidual(nn.Module):
    """h + f(norm(h))."""

    def __init__(self, cfg, layer_idx: int, sublayer_idx: int, **kwargs: Any):
        super().__init__()
        if kwargs:
            raise TypeError(f"prenorm residual takes no arguments, got {sorted(kwargs)}")
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, h: torch.Tensor, fn: Callable) -> tuple[torch.Tensor, Any]:
        y, extra = fn(self.norm(h))
        return h + y, extra

    @staticmethod
    def expand(x: torch.Tensor, cfg) -> torch.Tensor:
        return x

    @staticmethod
    def reduce(h: torch.Tensor, cfg) -> torch.Tensor:
        return h
