"""Experiments: arms × seeds -> measured metrics -> a computed verdict.

An experiment is declared once and registered by name:

    EXPERIMENTS.register("bigger_model", Experiment(
        name="bigger_model", paper="Scaling laws (sanity)", claim="a bigger model reaches lower held-out loss",
        metric="val_loss", direction="lower", baseline="small", technique="large",
        arms=["small", "large"], run=run_arm, headline=True))

`run(arm, seed, scale, out_dir) -> ArmResult` trains/evaluates one arm with one seed. The default verdict
compares `technique` with `baseline` on `metric` (see `compare`); an experiment may pass its own
`verdict(results) -> Verdict` (e.g. a fitted exponent's sign, or a trend across several arms).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np

Direction = Literal["lower", "higher"]
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


@dataclass
class ArmResult:
    metrics: dict[str, float]                                              # final scalars, e.g. {"val_loss": 3.1}
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # name -> [(x, y)]
    info: dict = field(default_factory=dict)                               # anything else worth saving


@dataclass
class Verdict:
    verdict: str            # reproduced / not reproduced / inconclusive
    rule: str               # the rule, in words, with its numbers
    baseline: tuple[float, float] = (math.nan, math.nan)   # mean, std
    technique: tuple[float, float] = (math.nan, math.nan)
    extra: dict = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    paper: str
    claim: str
    metric: str
    run: Callable[[str, int, str, Path], ArmResult]
    arms: list[str]
    baseline: str
    technique: str
    direction: Direction = "lower"
    headline: bool = False
    verdict: Optional[Callable[["Experiment", dict[str, list[ArmResult]]], Verdict]] = None
    plots: list[str] = field(default_factory=lambda: ["val_loss"])   # curve names to plot per arm
    description: str = ""
    min_effect: float = 0.0  # improvements smaller than this (in metric units) count as no improvement

    def decide(self, results: dict[str, list[ArmResult]]) -> Verdict:
        if self.verdict is not None:
            return self.verdict(self, results)
        b = [r.metrics[self.metric] for r in results[self.baseline]]
        t = [r.metrics[self.metric] for r in results[self.technique]]
        return compare(b, t, self.direction, self.min_effect)


def mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def compare(baseline: list[float], technique: list[float], direction: Direction = "lower",
            min_effect: float = 0.0, z: float = 2.0) -> Verdict:
    """Welch-style rule on seed means.

    gain = (baseline − technique) if lower is better, else (technique − baseline);
    se = sqrt(s_b²/n_b + s_t²/n_t).
    reproduced      if gain > max(z·se, min_effect)
    not reproduced  if gain < −z·se  (the technique is clearly worse) or, with min_effect > 0, gain ≤ 0
                    while se is below min_effect (a clear null)
    inconclusive    otherwise (or with fewer than 2 seeds per arm)
    """
    mb, sb = mean_std(baseline)
    mt, st = mean_std(technique)
    nb, nt = len(baseline), len(technique)
    gain = (mb - mt) if direction == "lower" else (mt - mb)
    if nb < 2 or nt < 2 or math.isnan(gain):
        return Verdict(INCONCLUSIVE, f"needs ≥2 seeds per arm (got {nb}, {nt})", (mb, sb), (mt, st))
    se = math.sqrt(sb**2 / nb + st**2 / nt)
    thr = max(z * se, min_effect)
    if gain > thr:
        v = REPRODUCED
    elif gain < -z * se or (min_effect > 0 and gain <= 0 and se < min_effect):
        v = NOT_REPRODUCED
    else:
        v = INCONCLUSIVE
    better = "lower" if direction == "lower" else "higher"
    rule = (f"gain ({better} is better) = {gain:.4g}, {z:g}·SE = {z * se:.4g}"
            + (f", min effect {min_effect:g}" if min_effect else "")
            + f" -> {v}")
    return Verdict(v, rule, (mb, sb), (mt, st), {"gain": gain, "se": se})


def trend_verdict(xs: list[float], ys_per_x: list[list[float]], direction: Direction, what: str) -> Verdict:
    """Monotone trend over an ordered sweep (e.g. loss vs steps): the slope of a least-squares line through
    all (x, y) points must have the claimed sign and be > 2 standard errors away from 0."""
    X = np.concatenate([[x] * len(ys) for x, ys in zip(xs, ys_per_x)]).astype(float)
    Y = np.concatenate([np.asarray(ys, float) for ys in ys_per_x])
    if len(set(X)) < 2 or len(Y) < 3:
        return Verdict(INCONCLUSIVE, f"{what}: too few points")
    A = np.stack([X, np.ones_like(X)], 1)
    coef, res, *_ = np.linalg.lstsq(A, Y, rcond=None)
    dof = max(len(Y) - 2, 1)
    resid = Y - A @ coef
    s2 = float(resid @ resid) / dof
    se = math.sqrt(s2 / max(float(((X - X.mean()) ** 2).sum()), 1e-12))
    slope = float(coef[0])
    want = -1 if direction == "lower" else 1
    if slope * want > 2 * se:
        v = REPRODUCED
    elif slope * want < -2 * se:
        v = NOT_REPRODUCED
    else:
        v = INCONCLUSIVE
    first, last = mean_std(ys_per_x[0]), mean_std(ys_per_x[-1])
    return Verdict(v, f"{what}: slope {slope:.4g} ± {se:.3g} (SE), want {'<' if want < 0 else '>'} 0 -> {v}",
                   first, last, {"slope": slope, "se": se})
