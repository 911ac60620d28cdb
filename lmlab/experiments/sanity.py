"""Two sanity claims that also prove the machinery: scale (model size, training length) lowers held-out loss.

Both train on the embedded multi-domain corpus and compare mean held-out loss over its domains.
"""
from __future__ import annotations

from pathlib import Path

from lmlab.experiments.base import ArmResult, Experiment
from lmlab.experiments.common import run_config, train_arm
from lmlab.registry import EXPERIMENTS

SIZES = {"small": {"d_model": 32, "n_layer": 1, "n_head": 2},
         "large": {"d_model": 128, "n_layer": 3, "n_head": 4}}


def _bigger(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    model = dict(SIZES[arm]) if scale == "quick" else {"d_model": 256 if arm == "small" else 768,
                                                     "n_layer": 2 if arm == "small" else 12}
    cfg = run_config(scale, {"model": model, "train": {"steps": 100 if scale == "quick" else 5000,
                                                       "eval_interval": 20 if scale == "quick" else 500}},
                     name=f"bigger_model/{arm}")
    return train_arm(cfg, seed, out)


EXPERIMENTS.register("bigger_model", Experiment(
    name="bigger_model", paper="Scaling laws (sanity)", claim="a bigger model reaches lower held-out loss",
    metric="val_loss", direction="lower", arms=["small", "large"], baseline="small", technique="large",
    run=_bigger, headline=True, plots=["val_loss", "train_loss"],
    description="Same data, steps and LR; model width/depth differ (quick: d=32×1 layer vs d=128×3 layers)."))


def _longer(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    steps = {"short": 30, "long": 150}[arm] if scale == "quick" else {"short": 1000, "long": 10000}[arm]
    cfg = run_config(scale, {"model": {"d_model": 64, "n_layer": 2, "n_head": 4} if scale == "quick" else {},
                             "train": {"steps": steps, "eval_interval": max(steps // 4, 1)}},
                     name=f"longer_training/{arm}")
    return train_arm(cfg, seed, out)


EXPERIMENTS.register("longer_training", Experiment(
    name="longer_training", paper="Scaling laws (sanity)", claim="longer training lowers held-out loss",
    metric="val_loss", direction="lower", arms=["short", "long"], baseline="short", technique="long",
    run=_longer, headline=True, plots=["val_loss", "train_loss"],
    description="Same model and LR schedule shape; 30 vs 150 optimizer steps at quick scale."))
