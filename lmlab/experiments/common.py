"""What experiments share: one preset per scale, recipes from configs/, one cached data loader, one `train_arm`.

Every arm that trains a RunConfig is `run_config(scale, overrides)`: the scale's preset (QUICK or FULL), then
the experiment's own overrides for that scale, then the arm's. Arms with a YAML recipe in configs/ read it
(`recipe`); a recipe is written at quick scale, and `full_recipe` derives the full-scale arm from it and the
FULL preset (`SCALE_WITH`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from lmlab.config import RunConfig, apply_overrides, read_yaml, validate
from lmlab.experiments.base import ArmResult
from lmlab.experiments.runkey import cached

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Quick scale: minutes on a CPU. Full scale: a GPU-sized config of the same shape.
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
PRESETS = {"quick": QUICK, "full": FULL}
SCALES = tuple(PRESETS)


def deep_update(base: dict, upd: Optional[dict]) -> dict:
    out = dict(base)
    for k, v in (upd or {}).items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def merge(*dicts: Optional[dict]) -> dict:
    """Nested overrides applied left to right."""
    out: dict = {}
    for d in dicts:
        out = deep_update(out, d)
    return out


def check_scale(scale: str) -> str:
    if scale not in PRESETS:
        raise ValueError(f"scale={scale!r}: choose quick or full")
    return scale


def run_config(scale: str = "quick", overrides: Optional[dict] = None, dotted: Optional[list[str]] = None,
               name: str = "arm") -> RunConfig:
    """Scale preset, then a nested-dict override, then dotted `key=value` overrides; validated."""
    data = deep_update(PRESETS[check_scale(scale)], overrides or {})
    data = apply_overrides({"name": name, **data}, dotted or [])
    return validate(RunConfig, data, source=f"experiment {name}")


def tiny_run_config(**overrides: Any) -> RunConfig:
    """Quick-scale config with nested-dict overrides: tiny_run_config(model={"n_layer": 2})."""
    return run_config("quick", overrides)


def with_seed(cfg: RunConfig, seed: int) -> RunConfig:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})


# ---------------------------------------------------------------------------------------------- recipes
@cached(maxsize=None)
def _read(path: str) -> dict:
    return read_yaml(path)


def recipe(rel: str) -> dict:
    """A YAML recipe under configs/ (e.g. "moe/routers_soft_moe.yaml") as a nested dict (a fresh copy)."""
    import copy

    return copy.deepcopy(_read(str(CONFIGS / rel)))


# A recipe is written at quick scale. At full scale each width-like key in its model section is multiplied by
# the full/quick ratio of the preset quantity it scales with (the experiment's resolved base config at each
# scale); counts (experts, top-k, granularity) and everything else stay as written.
SCALE_WITH = {"d_model": "d_model", "d_ff": "d_ff", "d_expert": "d_ff", "head_dim": "head_dim",
              "n_kv_head": "n_head", "slots_per_expert": "batch_size"}


def _quantity(cfg: RunConfig, what: str) -> int:
    m = cfg.model
    return {"d_model": m.d_model, "d_ff": m.ffn_hidden, "head_dim": m.head_dim, "n_head": m.n_head,
            "batch_size": cfg.train.batch_size}[what]


def _rescale(tree: Any, ratio: dict[str, float], key: Optional[str] = None) -> Any:
    if isinstance(tree, dict):
        return {k: _rescale(v, ratio, k) for k, v in tree.items()}
    if key in SCALE_WITH and isinstance(tree, int) and not isinstance(tree, bool):
        x = tree * ratio[SCALE_WITH[key]]
        if abs(x - round(x)) > 1e-9:
            raise ValueError(f"recipe key {key}={tree} does not scale to an integer ({x})")
        return int(round(x))
    return tree


def full_recipe(model: dict, quick_base: RunConfig, full_base: RunConfig) -> dict:
    """The model section of a quick-scale recipe for full scale: the keys where the recipe differs from the
    experiment's quick base (its technique), widths rescaled by SCALE_WITH. The rest comes from full_base."""
    ratio = {q: _quantity(full_base, q) / _quantity(quick_base, q) for q in set(SCALE_WITH.values())}
    base = quick_base.model.model_dump()
    diff = {k: v for k, v in model.items() if base.get(k) != v}
    return _rescale(diff, ratio)


# ------------------------------------------------------------------------------------------------- data
@cached(maxsize=4)
def _load(key: str):
    from lmlab.config import DataConfig
    from lmlab.data import load_data

    return load_data(DataConfig.model_validate_json(key))


def cached_data(data_cfg):
    """lmlab.data.load_data, cached per process (the arms and seeds of an experiment share the corpus)."""
    return _load(data_cfg.model_dump_json())


# ------------------------------------------------------------------------------------------------ train
def train_seeded(cfg: RunConfig, seed: int, out_dir: Optional[Path] = None, **train_kwargs: Any):
    """lmlab.train.trainer.train with train.seed = seed (model init and data order both follow it)."""
    from lmlab.train.trainer import train

    return train(with_seed(cfg, seed), out_dir, **train_kwargs)


def arm_result(res, extra: Optional[dict] = None) -> ArmResult:
    """TrainResult -> ArmResult: mean and per-domain held-out loss, router statistics of MoE layers."""
    import numpy as np

    from lmlab.models.decoder import count_params, flops_per_token

    metrics = {"val_loss": res.val_loss, "val_ppl": math.exp(min(res.val_loss, 50))}
    metrics.update({f"val_loss/{k}": v for k, v in res.val_losses.items()})
    info = {"params": sum(p.numel() for p in res.model.parameters()),
            "non_embedding_params": count_params(res.model), "tokens": res.tokens,
            "seconds": round(res.seconds, 2), "bad_steps": res.bad_steps}
    try:
        info["flops_per_token"] = flops_per_token(res.model)
    except Exception:  # noqa: BLE001 - a mixer without a FLOP count should not fail the run
        pass
    info.update(extra or {})
    moe = [b.ffn for b in getattr(res.model, "blocks", []) if getattr(b, "ffn_name", None) == "moe"]
    if moe:
        mets = [f.metrics() for f in moe]
        for key in ("dropped", "entropy"):
            vals = [x[key] for x in mets if key in x]
            if vals:
                metrics[f"router/{key}"] = float(np.mean(vals))
    return ArmResult(metrics=metrics, curves=res.curves, info=info)


def train_arm(cfg: RunConfig, seed: int, out_dir: Optional[Path] = None, **train_kwargs: Any) -> ArmResult:
    """Train one arm with one seed (model init and data order both follow the seed) -> ArmResult."""
    return arm_result(train_seeded(cfg, seed, out_dir, **train_kwargs))


# ---------------------------------------------------------------------------------------- parameter counts
def meta_model(model_cfg):
    """The Decoder for `model_cfg` on the meta device (shapes only: parameter counts without allocating)."""
    import torch

    from lmlab.models.decoder import Decoder

    with torch.device("meta"):
        return Decoder(model_cfg)


def non_embedding_params(model_cfg) -> int:
    from lmlab.models.decoder import count_params

    return count_params(meta_model(model_cfg))


def active_params(model, routers: bool = True) -> float:
    """Active non-embedding parameters: routed FFN experts counted k/e of their total, MoA attention experts
    (query and output projections) likewise; routers' own weights left out with routers=False."""
    from lmlab.models.decoder import count_params

    total = float(count_params(model))
    if not routers:
        total -= sum(p.numel() for n, p in model.named_parameters() if ".router." in n)
    for blk in model.blocks:
        if getattr(blk, "ffn_name", None) == "moe":
            n_ex = sum(p.numel() for p in blk.ffn.experts.parameters())
            total -= n_ex - n_ex * blk.ffn.k / blk.ffn.e
        if getattr(blk, "mixer_name", None) == "moa":
            mx = blk.mixer
            total -= (mx.w_q[0].numel() + mx.w_o[0].numel()) * (mx.e - mx.k)
    return total


def equal_params(rtol: float = 0.0, count=None, arms: Optional[list[str]] = None):
    """An `Experiment.invariants` check: the arms' (active) non-embedding parameter counts agree within rtol
    of the largest. `count(model_cfg) -> float` defaults to non_embedding_params."""
    def check(cfgs: dict) -> dict:
        counts = {a: float((count or non_embedding_params)(c.model)) for a, c in cfgs.items()
                  if arms is None or a in arms}
        hi, lo = max(counts.values()), min(counts.values())
        if hi - lo > rtol * hi:
            raise AssertionError(f"arms differ in parameters by {(hi - lo) / hi:.2%} > {rtol:.2%}: {counts}")
        return counts
    return check
