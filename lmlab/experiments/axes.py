"""Axis metadata of the report's figures: what a curve's x and y are, in which units, on which scale.

An experiment's run returns curves as `{name: [(x, y), ...]}` (`ArmResult.curves`); the name alone does not
say what x is (training steps, a batch-size sweep, a prefix length, epochs …). `axis_for(experiment, curve,
xs)` answers from, in order: an override for that (experiment, curve) in `OVERRIDES`, the defaults per curve
name in `CURVES`, the defaults per name prefix in `PREFIXES`, and finally the curve name itself with "x".
An x scale left as None is decided from the values: a geometric sweep (≥ 3 positive values whose successive
ratios are equal and ≥ 1.5, e.g. 1, 2, 4, 8 or 10, 100, 1000) is drawn on a log axis.

`metric_label(metric)` is the y label of the per-arm plot of an experiment's metric (the metric with its unit).

Adding an experiment with a new curve: add its name to `CURVES` (or an override) here; nothing in the
experiment changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

LOSS = "nats/token"


@dataclass(frozen=True)
class Axis:
    x: str                          # x axis label, with its unit
    y: str                          # y axis label, with its unit
    xscale: Optional[str] = None    # "linear" | "log" | None: decided from the x values (geometric -> log)
    yscale: str = "linear"


CURVES: dict[str, Axis] = {
    "val_loss": Axis("training step", f"held-out loss ({LOSS})", "linear"),
    "train_loss": Axis("training step", f"training loss ({LOSS})", "linear"),
    "gap/val_loss": Axis("training step", f"held-out loss gap, expand 8 − expand 1 ({LOSS})", "linear"),
    "speedup_vs_batch": Axis("batch size (sequences sharing the prefix)", "speedup (naive time / Hydragen time, ×)"),
    "speedup_vs_prefix": Axis("shared prefix length (tokens)", "speedup (naive time / Hydragen time, ×)"),
    "test_error": Axis("training samples T", "test error (fraction of mass)", None, "log"),
    "dpo_loss": Axis("DPO optimizer step", "DPO loss (nats)", "linear"),
    "info_nce": Axis("training step", "InfoNCE loss (nats)", "linear"),
    "val_loss_vs_ln_lr": Axis("ln(learning rate)", f"held-out loss ({LOSS})", "linear"),
    "gold_acc": Axis("epoch", "gold preference accuracy (fraction)", "linear"),
    "len_corr": Axis("epoch", "Pearson r (reward, response length)", "linear"),
    "gold_reward": Axis("PPO iteration", "gold reward (mean per sample)", "linear"),
    "rm_reward": Axis("PPO iteration", "reward-model reward (mean per sample)", "linear"),
    "train_sample_acc": Axis("V-STaR iteration", "training sample accuracy (fraction)", "linear"),
}

PREFIXES: dict[str, Axis] = {
    "probe/": Axis("training step", "probe value", "linear"),
}

OVERRIDES: dict[tuple[str, str], Axis] = {
    ("longer_training", "val_loss"): Axis("training step", f"held-out loss ({LOSS}); arms train 30 vs 150 steps",
                                          "linear"),
    ("model_collapse_tails", "test_error"): Axis("training samples T", "test error (fraction of mass)", "log", "log"),
}

METRIC_UNITS: dict[str, str] = {
    "val_loss": LOSS, "train_loss": LOSS, "loss": LOSS, "ppl": "perplexity", "accuracy": "fraction",
    "acc": "fraction", "winrate": "fraction", "speedup": "×", "seconds": "s", "ms": "ms",
}


def is_geometric(xs: Optional[Sequence[float]], min_ratio: float = 1.5, tol: float = 0.05) -> bool:
    """≥ 3 positive increasing values with equal successive ratios (within `tol`, relative) of at least
    `min_ratio`: a sweep of sizes, drawn on a log axis."""
    if not xs or len(xs) < 3:
        return False
    try:
        v = [float(x) for x in xs]
    except (TypeError, ValueError):
        return False
    if any(not math.isfinite(x) or x <= 0 for x in v):
        return False
    ratios = [b / a for a, b in zip(v, v[1:])]
    r0 = ratios[0]
    return r0 >= min_ratio and all(abs(r / r0 - 1) <= tol for r in ratios)


def axis_for(experiment: str, curve: str, xs: Optional[Sequence[float]] = None) -> Axis:
    """The axes of `curve` drawn for `experiment`, with the x scale decided (see the module docstring)."""
    ax = OVERRIDES.get((experiment, curve)) or CURVES.get(curve)
    if ax is None:
        ax = next((a for p, a in PREFIXES.items() if curve.startswith(p)), None)
        if ax is not None and ax.y == "probe value":
            ax = replace(ax, y=curve[len("probe/"):].replace("_", " "))
    if ax is None:
        ax = Axis("x", curve)
    if ax.xscale is None:
        ax = replace(ax, xscale="log" if is_geometric(xs) else "linear")
    return ax


def metric_label(metric: str) -> str:
    """`metric (unit)` when the metric's name tells its unit (by name or by its last `_` part)."""
    unit = METRIC_UNITS.get(metric)
    if unit is None:
        for part in reversed(metric.split("/")[-1].split("_")):
            if part in METRIC_UNITS:
                unit = METRIC_UNITS[part]
                break
    return f"{metric} ({unit})" if unit else metric
