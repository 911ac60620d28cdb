"""Two sanity claims that also prove the machinery: scale (model size, training length) lowers held-out loss.

Both train on the embedded multi-domain corpus and compare mean held-out loss over its domains. Verdict (both):
the default rule, a one-sided Welch t-test of the loss gain at α = 0.05; headline rows, 5 seeds.
"""
from __future__ import annotations

from pathlib import Path

from lmlab.experiments.base import HEADLINE_SEEDS, ArmResult, Experiment
from lmlab.experiments.common import run_config, train_arm, with_seed
from lmlab.registry import EXPERIMENTS

# Arms as overrides of the scale preset.
SIZES = {"quick": {"small": {"d_model": 32, "n_layer": 1, "n_head": 2},
                   "large": {"d_model": 128, "n_layer": 3, "n_head": 4}},
         "full": {"small": {"d_model": 256, "n_layer": 2}, "large": {"d_model": 768, "n_layer": 12}}}
BIGGER_TRAIN = {"quick": {"steps": 100, "eval_interval": 20}, "full": {"steps": 5000, "eval_interval": 500}}


def bigger_config(arm: str, scale: str, seed: int = 0):
    cfg = run_config(scale, {"model": dict(SIZES[scale][arm]), "train": BIGGER_TRAIN[scale]},
                     name=f"bigger_model/{arm}")
    return with_seed(cfg, seed)


def _bigger(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    return train_arm(bigger_config(arm, scale, seed), seed, out)


EXPERIMENTS.register("bigger_model", Experiment(
    name="bigger_model", paper="Scaling laws (sanity)", claim="a bigger model reaches lower held-out loss",
    metric="val_loss", direction="lower", arms=["small", "large"], baseline="small", technique="large",
    run=_bigger, arm_config=bigger_config, headline=True, seeds=HEADLINE_SEEDS, plots=["val_loss", "train_loss"],
    description="Same data, steps and LR; model width/depth differ (quick: d=32×1 layer vs d=128×3 layers)."))

STEPS = {"quick": {"short": 30, "long": 150}, "full": {"short": 1000, "long": 10000}}
LONGER_MODEL = {"quick": {"d_model": 64, "n_layer": 2, "n_head": 4}, "full": {}}


def longer_config(arm: str, scale: str, seed: int = 0):
    steps = STEPS[scale][arm]
    cfg = run_config(scale, {"model": LONGER_MODEL[scale], "train": {"steps": steps,
                                                                     "eval_interval": max(steps // 4, 1)}},
                     name=f"longer_training/{arm}")
    return with_seed(cfg, seed)


def _longer(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    return train_arm(longer_config(arm, scale, seed), seed, out)


EXPERIMENTS.register("longer_training", Experiment(
    name="longer_training", paper="Scaling laws (sanity)", claim="longer training lowers held-out loss",
    metric="val_loss", direction="lower", arms=["short", "long"], baseline="short", technique="long",
    run=_longer, arm_config=longer_config, headline=True, seeds=HEADLINE_SEEDS, plots=["val_loss", "train_loss"],
    description="Same model and LR schedule shape; 30 vs 150 optimizer steps at quick scale."))
