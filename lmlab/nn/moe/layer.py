"""The `moe` channel mixer: router + SwiGLU experts (+ shared experts), fine-grained granularity.

Notation: b = batch, t = tokens, d = d_model, e = routed experts (n_experts·G), h = expert hidden
(d_ff/G), k = experts per token (top_k·G), g/s = routing groups / tokens per group.

Fine-grained MoE (Krajewski et al. 2024): granularity G splits each expert into G experts of hidden d_ff/G
and routes each token to k·G of them, so active FLOPs stay those of k dense FFNs while routing gets finer.
Shared experts (always active, DeepSeekMoE style) are one SwiGLU of hidden n_shared·h.

Routing groups: `group="batch"` routes all b·t tokens together; `"sequence"` one group per sequence;
`"position"` one group per position across the batch. Expert choice and Soft MoE mix information across
the tokens of a group, which in a causal LM would let a token see its own future; `"auto"` therefore uses
`"position"` for them (tokens of other sequences at the same position only) and `"batch"` for token choice.

YAML:  model: {ffn: moe, ffn_args: {moe: {router: softmax_ec, n_experts: 8, top_k: 1, capacity_factor: 1.0}}}
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from lmlab.nn.ffn import SwiGLU
from lmlab.nn.moe.experts import (SwiGLUExperts, dispatch_combine, naive_dispatch_combine,
                                  naive_soft_dispatch_combine, soft_dispatch_combine)
from lmlab.nn.moe.routers import ROUTERS, SoftRouting, aux_losses, build_router, router_metrics
from lmlab.registry import CHANNEL_MIXERS


class _SharedCfg:
    def __init__(self, d_model: int, d_ff: int):
        self.d_model, self.ffn_hidden = d_model, d_ff


@CHANNEL_MIXERS.register("moe")
class MoE(nn.Module):
    def __init__(self, cfg, layer_idx: int = 0, router: str = "topk_softmax_tc", n_experts: int = 8,
                 top_k: int = 2, capacity_factor: Optional[float] = None, granularity: int = 1,
                 d_expert: Optional[int] = None, n_shared: int = 0, batch_priority: bool = False,
                 group: str = "auto", slots_per_expert: int = 1, sinkhorn_iters: int = 10,
                 noise_std: float = 0.0, balance_weight: float = 0.01, z_weight: float = 0.001,
                 importance_weight: float = 0.0, load_weight: float = 0.0, bias_update_rate: float = 0.0,
                 out_bias: bool = False):
        super().__init__()
        if router not in ROUTERS:
            raise ValueError(f"ffn_args.moe.router={router!r}: choose one of {', '.join(sorted(ROUTERS))}")
        if group not in ("auto", "batch", "sequence", "position"):
            raise ValueError(f"ffn_args.moe.group={group!r}: choose auto, batch, sequence or position")
        if granularity < 1 or n_experts < 1 or top_k < 1:
            raise ValueError("ffn_args.moe: granularity, n_experts and top_k must be >= 1")
        d = cfg.d_model
        base_h = d_expert or cfg.ffn_hidden
        if base_h % granularity:
            raise ValueError(f"ffn_args.moe.granularity={granularity} must divide expert hidden {base_h}")
        self.e, self.h, self.k = n_experts * granularity, base_h // granularity, top_k * granularity
        if self.k > self.e:
            raise ValueError(f"ffn_args.moe.top_k={top_k}·G exceeds the {self.e} experts")
        self.router_name, self.granularity, self.group = router, granularity, group
        std = cfg.init_std
        out_std = std / math.sqrt(2 * cfg.n_layer)
        self.experts = SwiGLUExperts(self.e, d, self.h, std, out_std)
        rkw = dict(top_k=self.k, capacity_factor=capacity_factor)
        if router == "soft":
            rkw["slots_per_expert"] = slots_per_expert
        else:
            rkw.update(batch_priority=batch_priority, sinkhorn_iters=sinkhorn_iters,
                       bias_update_rate=bias_update_rate, noise_std=noise_std)
        self.router = build_router(router, d, self.e, **rkw)
        self.shared = SwiGLU(_SharedCfg(d, n_shared * self.h)) if n_shared > 0 else None
        self.n_shared = n_shared
        self.bias = nn.Parameter(torch.zeros(d)) if out_bias else None
        self.weights = {"balance": balance_weight, "z": z_weight, "importance": importance_weight,
                        "load": load_weight}
        self.noise_std = noise_std
        self.aux_loss: Optional[torch.Tensor] = None
        self.aux_terms: dict[str, float] = {}
        self._last = None

    # --------------------------------------------------------------------------------------- grouping
    def _group_mode(self) -> str:
        if self.group != "auto":
            return self.group
        return "position" if (self.router_name == "soft" or getattr(self.router, "expert_choice", False)) else "batch"

    def _to_groups(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        mode = self._group_mode()
        if mode == "batch":
            return x.reshape(1, b * t, d)
        if mode == "sequence":
            return x
        return x.transpose(0, 1)                                         # (t, b, d)

    def _from_groups(self, y: torch.Tensor, shape) -> torch.Tensor:
        b, t, d = shape
        mode = self._group_mode()
        if mode == "position":
            return y.transpose(0, 1).reshape(b, t, d)
        return y.reshape(b, t, d)

    # ---------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg = self._to_groups(x)                                          # (g, s, d)
        r = self.router(xg)
        if isinstance(r, SoftRouting):
            yg = soft_dispatch_combine(xg, r.dispatch, r.combine, self.experts)
        else:
            yg = dispatch_combine(xg, r, self.experts)
        self._set_aux(r)
        return self._finish(x, self._from_groups(yg, x.shape))

    def naive_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reference: the router's loop-built D/C and a token loop over experts."""
        xg = self._to_groups(x)
        D, C = self.router.naive(xg)
        if self.router_name == "soft":
            yg = naive_soft_dispatch_combine(xg, D, C, self.experts)
        else:
            yg = naive_dispatch_combine(xg, D, C, self.experts)
        return self._finish(x, self._from_groups(yg, x.shape))

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.shared is not None:
            y = y + self.shared(x)
        if self.bias is not None:
            y = y + self.bias
        return y

    def _set_aux(self, r) -> None:
        self._last = r
        terms = aux_losses(r, self.noise_std)
        total = None
        for name, v in terms.items():
            w = self.weights.get(name, 0.0)
            if w:
                total = w * v if total is None else total + w * v
        self.aux_terms = terms
        self.aux_loss = total

    def metrics(self) -> dict[str, float]:
        """Router metrics of the last forward: per-expert load, dropped fraction, entropy, aux terms."""
        if self._last is None:
            return {}
        out = router_metrics(self._last)
        out.update({f"aux/{k}": float(v) for k, v in self.aux_terms.items()})
        return out

    def active_experts_per_token(self, tokens_per_group: Optional[int] = None) -> float:
        if self.router_name == "soft":
            s = tokens_per_group or (self._last.dispatch.shape[1] if self._last is not None else self.e)
            return self.e * self.router.slots / s
        if getattr(self.router, "expert_choice", False):
            return float(self.router.cf)
        return float(self.k)

    def flops_per_token(self) -> int:
        d = self.experts.d
        f = 2 * 3 * d * self.h * (self.active_experts_per_token() + self.n_shared) + 2 * d * self.e
        return int(f)
