"""Helpers shared by experiments: a quick-scale RunConfig and `train_arm` (train -> ArmResult)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from lmlab.config import RunConfig, apply_overrides, validate
from lmlab.experiments.base import ArmResult

# Quick scale: minutes on a 2-core CPU. Full scale: a GPU-sized config of the same shape.
QUICK = {
    "model": {"d_model": 96, "n_layer": 3, "n_head": 4, "max_seq_len": 128},
    "data": {"seq_len": 128, "vocab_size": 4096, "max_train_tokens": 2_000_000, "max_val_tokens_per_domain": 16384},
    "train": {"steps": 200, "batch_size": 16, "lr": 3e-3, "warmup_steps": 20, "eval_interval": 50,
              "eval_batches": 8, "log_interval": 10, "progress": False, "tensorboard": False},
}
FULL = {
    "model": {"d_model": 512, "n_layer": 8, "n_head": 8, "max_seq_len": 512},
    "data": {"seq_len": 512, "vocab_size": 16384, "max_val_tokens_per_domain": 262144, "embedded_chars": 10_000_000},
    "train": {"steps": 5000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 200, "eval_interval": 500,
              "eval_batches": 32, "log_interval": 50, "progress": True},
}


def _deep_update(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_config(scale: str = "quick", overrides: Optional[dict] = None, dotted: Optional[list[str]] = None,
               name: str = "arm") -> RunConfig:
    """Scale preset, then a nested-dict override, then dotted `key=value` overrides; validated."""
    base = {"quick": QUICK, "full": FULL}.get(scale)
    if base is None:
        raise ValueError(f"scale={scale!r}: choose quick or full")
    data = _deep_update(base, overrides or {})
    data = apply_overrides({"name": name, **data}, dotted or [])
    return validate(RunConfig, data, source=f"experiment {name}")


def tiny_run_config(**overrides: Any) -> RunConfig:
    """Quick-scale config with nested-dict overrides: tiny_run_config(model={"n_layer": 2})."""
    return run_config("quick", overrides)


def train_arm(cfg: RunConfig, seed: int, out_dir: Optional[Path] = None, **train_kwargs: Any) -> ArmResult:
    """Train one arm with one seed (model init and data order both follow the seed)."""
    from lmlab.train.trainer import train

    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
    res = train(cfg, out_dir, **train_kwargs)
    metrics = {"val_loss": res.val_loss, "val_ppl": math.exp(min(res.val_loss, 50))}
    metrics.update({f"val_loss/{k}": v for k, v in res.val_losses.items()})
    params = sum(p.numel() for p in res.model.parameters())
    return ArmResult(metrics=metrics, curves=res.curves,
                     info={"params": params, "tokens": res.tokens, "seconds": round(res.seconds, 2),
                           "bad_steps": res.bad_steps})
