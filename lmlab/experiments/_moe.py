"""What the mixture-of-experts experiments share: the family's overrides of the scale preset, arms read from
configs/moe/*.yaml, and the router/active-parameter bookkeeping of an MoE run.

Each arm's recipe is its YAML file in configs/moe/, written at quick scale (`lmlab train configs/moe/<arm>.yaml`
trains it alone). At full scale the arm is the FULL preset (with d_ff = 3·d_model, the quick ratio 192/64)
plus the recipe's technique — the model keys where it differs from the family's quick base — with widths
rescaled by `common.SCALE_WITH` (expert hidden with d_ff, head dim with the preset's head dim, K/V heads with
the head count, Soft MoE slots with the batch), so the claimed invariants hold at both scales.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from lmlab.experiments.common import (FULL, active_params, arm_result, cached_data, full_recipe, merge, meta_model,
                                      recipe, run_config, train_seeded, with_seed)

OVERRIDES = {
    "quick": {"model": {"d_model": 64, "n_layer": 2, "n_head": 4, "max_seq_len": 64, "d_ff": 192},
              "train": {"steps": 150, "batch_size": 16, "lr": 3e-3, "warmup_steps": 15, "eval_interval": 50,
                        "eval_batches": 4, "log_interval": 25},
              "data": {"seq_len": 64, "max_val_tokens_per_domain": 8192}},
    "full": {"model": {"d_ff": 3 * FULL["model"]["d_model"]}},
}


def base_config(scale: str, extra: Optional[dict] = None, name: str = "moe"):
    return run_config(scale, merge(OVERRIDES[scale], extra), name=name)


def arm_config(rel: str, scale: str, seed: int = 0, full: Optional[dict] = None):
    """configs/moe/<rel> at `scale`; `full` = this experiment's own overrides at full scale."""
    r = recipe(f"moe/{rel}")
    if scale == "quick":
        data = merge(OVERRIDES["quick"], {k: r[k] for k in ("model", "train", "data") if k in r})
    else:
        model = full_recipe(r.get("model", {}), base_config("quick"), base_config("full"))
        domains = {"data": {"domains": r["data"]["domains"]}} if "domains" in r.get("data", {}) else {}
        data = merge(OVERRIDES[scale], {"model": model}, domains, full)
    return with_seed(run_config(scale, data, name=r.get("name", rel)), seed)


def train_moe(cfg, seed: int, out: Path, model=None, data=None):
    """Train with the per-process cached corpus; never resume (each arm/seed dir is fresh)."""
    return train_seeded(cfg, seed, out, model=model, data=data if data is not None else cached_data(cfg.data),
                        resume=False)


def result(res, extra: Optional[dict] = None):
    return arm_result(res, extra)


def active_non_embedding(model_cfg) -> float:
    """Active non-embedding parameters of a model config (built on the meta device)."""
    return active_params(meta_model(model_cfg))


def vals(results, arm, metric="val_loss"):
    return [r.metrics[metric] for r in results[arm]]
