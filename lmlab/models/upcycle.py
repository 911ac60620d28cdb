"""Dense -> MoE conversions: sparse upcycling (Komatsuzaki et al. 2023; MoE-LLaVA's MoE-tuning init) and the
Branch-Train-MiX merge (Sukhbaatar et al. 2024).

upcycle(dense):    every (or every other) SwiGLU FFN becomes an MoE layer whose E experts are copies of it,
                   with a fresh router; all other parameters are copied. With a router whose combine weights
                   sum to 1 per token (top-k then softmax, dropless), the upcycled model computes exactly the
                   dense function at initialisation, whatever the router decides.
btx_merge(models): n domain models branched from one seed: FFN of model i -> expert i of each MoE layer;
                   every other parameter (attention, norms, embeddings) is the mean over the n models.

Both take and return Decoders, so they live in models/ (nn/ never imports models/).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder


def _moe_config(cfg: ModelConfig, n_experts: int, top_k: int, router: str, every_other: bool,
                moe_args: dict[str, Any]) -> ModelConfig:
    if cfg.ffn != "swiglu" or cfg.ffn_pattern:
        raise ValueError(f"upcycling needs a dense swiglu model, got ffn={cfg.ffn!r} ffn_pattern={cfg.ffn_pattern}")
    args = {"router": router, "n_experts": n_experts, "top_k": top_k, "d_expert": cfg.ffn_hidden, **moe_args}
    data = cfg.model_dump()
    data["ffn_args"] = {**cfg.ffn_args, "moe": args}
    if every_other:  # MoE-LLaVA: MoE on the odd layers, dense FFN kept on the even ones
        data["ffn_pattern"] = ["swiglu", "moe"]
    else:
        data["ffn"] = "moe"
    return ModelConfig(**data)


def _is_ffn_key(key: str) -> bool:
    parts = key.split(".")
    return len(parts) > 2 and parts[0] == "blocks" and parts[2] == "ffn"


def _ffn_into_expert(moe, ffn_sd: dict[str, torch.Tensor], i: int) -> None:
    """SwiGLU Linear weights (h, d)/(d, h) -> stacked expert weights (d, h)/(h, d) at expert i."""
    with torch.no_grad():
        moe.experts.w_gate[i].copy_(ffn_sd["gate.weight"].t())
        moe.experts.w_up[i].copy_(ffn_sd["up.weight"].t())
        moe.experts.w_down[i].copy_(ffn_sd["down.weight"].t())


def _ffn_state(sd: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    pre = f"blocks.{layer}.ffn."
    return {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}


def upcycle(dense: Decoder, n_experts: int = 4, top_k: int = 2, router: str = "topk_softmax_tc",
            every_other: bool = False, seed: Optional[int] = None, **moe_args: Any):
    cfg = _moe_config(dense.cfg, n_experts, top_k, router, every_other, moe_args)
    if seed is not None:
        torch.manual_seed(seed)
    moe = Decoder(cfg).to(dense.embed.weight.device, dense.embed.weight.dtype)
    sd = dense.state_dict()
    keep = {k: v for k, v in sd.items() if not (_is_ffn_key(k) and cfg.ffn_for(int(k.split(".")[1])) == "moe")}
    missing, unexpected = moe.load_state_dict(keep, strict=False)
    assert not unexpected, unexpected
    for i, blk in enumerate(moe.blocks):
        if blk.ffn_name == "moe":
            for j in range(blk.ffn.e):
                _ffn_into_expert(blk.ffn, _ffn_state(sd, i), j)
    return moe


def btx_merge(models: list, top_k: int = 2, router: str = "topk_softmax_tc",
              seed: Optional[int] = None, **moe_args: Any):
    if len(models) < 2:
        raise ValueError("btx_merge needs at least two domain models")
    base = models[0].cfg
    for m in models[1:]:
        if m.cfg != base:
            raise ValueError("btx_merge: domain models must share one config (branched from one seed)")
    cfg = _moe_config(base, len(models), top_k, router, False, moe_args)
    if seed is not None:
        torch.manual_seed(seed)
    ref = models[0]
    merged = Decoder(cfg).to(ref.embed.weight.device, ref.embed.weight.dtype)
    sds = [m.state_dict() for m in models]
    avg = {k: torch.stack([sd[k] for sd in sds]).mean(0) for k in sds[0] if not _is_ffn_key(k)}
    missing, unexpected = merged.load_state_dict(avg, strict=False)
    assert not unexpected, unexpected
    for i, blk in enumerate(merged.blocks):
        for j, sd in enumerate(sds):
            _ffn_into_expert(blk.ffn, _ffn_state(sd, i), j)
    return merged
