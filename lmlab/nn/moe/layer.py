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

from dataclasses import replace
from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import nn

from lmlab.config import ArgError, ComponentArgs, Dims, TopK, one_of
from lmlab.nn.block import Component
from lmlab.nn.ffn import SwiGLU
from lmlab.nn.moe.experts import (SwiGLUExperts, dispatch_combine, naive_dispatch_combine,
                                  naive_soft_dispatch_combine, soft_dispatch_combine)
from lmlab.nn.moe.routers import SoftRouting, aux_losses, router_metrics
from lmlab.registry import CHANNEL_MIXERS, ROUTERS


@CHANNEL_MIXERS.register("moe")
class MoE(Component):
    """Mixture-of-experts FFN: SwiGLU experts behind a registered router (ROUTERS), optional shared experts."""

    class Args(ComponentArgs):
        """ffn_args.moe: the router (a ROUTERS name) and its options, expert count/size and aux-loss weights."""

        router: Annotated[str, one_of(ROUTERS.names, "unknown MoE router; choose one of")] = Field(
            "topk_softmax_tc", description="a ROUTERS name (lmlab list)")
        n_experts: int = Field(8, ge=1)
        top_k: TopK = Field(2, ge=1, description="experts per token (token choice); default cf (expert choice)")
        capacity_factor: Optional[float] = Field(None, gt=0, description="None = dropless (token choice)")
        granularity: int = Field(1, ge=1, description="G: each expert split into G of hidden d_ff/G")
        d_expert: Optional[int] = Field(None, ge=1, description="expert hidden; None = model.d_ff")
        n_shared: int = Field(0, ge=0, description="always-active shared experts")
        batch_priority: bool = False
        group: Literal["auto", "batch", "sequence", "position"] = "auto"
        slots_per_expert: int = Field(1, ge=1, description="soft MoE slots per expert")
        sinkhorn_iters: int = Field(10, ge=0)
        noise_std: float = Field(0.0, ge=0)
        balance_weight: float = Field(0.01, ge=0)
        z_weight: float = Field(0.001, ge=0)
        importance_weight: float = Field(0.0, ge=0)
        load_weight: float = Field(0.0, ge=0)
        bias_update_rate: float = Field(0.0, ge=0)
        out_bias: bool = False

        def check(self, dims: Dims) -> None:
            base_h = self.d_expert or dims.ffn_hidden
            if base_h % self.granularity:
                raise ArgError("granularity", f"must divide the expert hidden width {base_h}")

    RESIDUAL_OUT = ("experts.w_down", "shared.down.weight")

    def __init__(self, dims: Dims, args: Args):
        super().__init__()
        d, G = dims.d_model, args.granularity
        base_h = args.d_expert or dims.ffn_hidden
        self.e, self.h, self.k = args.n_experts * G, base_h // G, args.top_k * G
        self.router_name, self.granularity, self.group = args.router, G, args.group
        self.experts = SwiGLUExperts(self.e, d, self.h)
        router_cls = ROUTERS.get(args.router)
        fields = {k: getattr(args, k) for k in router_cls.Args.model_fields if k not in ("top_k",)}
        self.router = router_cls(d, self.e, router_cls.Args(top_k=self.k, **fields))
        self.shared = (SwiGLU(replace(dims, ffn_hidden=args.n_shared * self.h), SwiGLU.Args())
                       if args.n_shared > 0 else None)
        self.n_shared = args.n_shared
        self.bias = nn.Parameter(torch.zeros(d)) if args.out_bias else None
        self.weights = {"balance": args.balance_weight, "z": args.z_weight, "importance": args.importance_weight,
                        "load": args.load_weight}
        self.noise_std = args.noise_std
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
