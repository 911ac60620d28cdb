"""Experiments: arms × seeds -> measured metrics -> a computed verdict.

An experiment is declared once and registered by name:

    EXPERIMENTS.register("bigger_model", Experiment(
        name="bigger_model", paper="Scaling laws (sanity)", claim="a bigger model reaches lower held-out loss",
        metric="val_loss", direction="lower", baseline="small", technique="large",
        arms=["small", "large"], run=run_arm, headline=True, seeds=5))

`run(arm, seed, scale, out_dir) -> ArmResult` trains/evaluates one arm with one seed. Experiments that train
a `RunConfig` also give `arm_config(arm, scale, seed) -> RunConfig` (what `run` trains, built without
training: tests/test_full_scale.py builds every full-scale arm from it) and, where the claim fixes an
invariant between arms (equal parameters, equal active compute), `invariants(configs) -> dict` that checks it.

The verdict rule of every experiment is fixed before any run and written next to its registration. All of
them use the statistics below, one-sided at α = 0.05 with Student-t quantiles:

  compare      technique vs baseline on one metric: Welch t-test (paired t when the experiment declares
               `paired=True`: the arms of a seed share init and data by design), H1: gain > min_effect.
               reproduced if that test is significant; not reproduced if the mirror test (H1: gain <
               min_effect) is; inconclusive otherwise. With min_effect = 0 the mirror test is "the technique
               is significantly worse"; with min_effect > 0 it also covers a gain shown to be smaller than
               min_effect (e.g. a TOST-equivalence to 0 within ±min_effect).
  noninferior  "matches or beats": compare with margin −tol (H1: gain > −tol).
  equivalent   "matches": TOST — reproduced if the 90% confidence interval of the difference lies inside
               ±tol (both one-sided tests significant); not reproduced if the difference is significantly
               outside ±tol.
  exceeds      one-sample t-test of a mean against a fixed threshold.
  trend_verdict  least-squares slope over an ordered sweep, t-test with n − 2 degrees of freedom.
  combine      sub-verdicts of one claim: how="all" (reproduced iff all are, not reproduced if any is not)
               or how="any" (reproduced if any is, not reproduced iff all are not).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np

Direction = Literal["lower", "higher"]
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
ALPHA = 0.05            # one-sided level of every test
HEADLINE_SEEDS = 5      # seeds every headline row declares


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
    paired: bool = False     # the arms of one seed share init and data by design: paired t over seeds
    seeds: int = 3           # seeds per arm when the user does not choose (headline rows: HEADLINE_SEEDS)
    arm_config: Optional[Callable[[str, str, int], Any]] = None      # (arm, scale, seed) -> RunConfig
    invariants: Optional[Callable[[dict[str, Any]], dict]] = None    # {arm: RunConfig} -> facts; raises if broken

    def __post_init__(self) -> None:
        for role, arm in (("baseline", self.baseline), ("technique", self.technique)):
            if arm not in self.arms:
                raise ValueError(f"experiment {self.name}: {role} arm {arm!r} is not one of {self.arms}")
        if self.headline and self.seeds < HEADLINE_SEEDS:
            raise ValueError(f"experiment {self.name}: a headline row needs seeds >= {HEADLINE_SEEDS}")

    def decide(self, results: dict[str, list[ArmResult]]) -> Verdict:
        if self.verdict is not None:
            return self.verdict(self, results)
        b, t = arm_values(results, self.baseline, self.technique, self.metric, self.paired)
        return compare(b, t, self.direction, self.min_effect, paired=self.paired)


# ----------------------------------------------------------------------------------------------- helpers
def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _seed_of(r: ArmResult, i: int):
    return r.info.get("seed", i)


def arm_values(results: dict[str, list[ArmResult]], a: str, b: str, metric: str,
               paired: bool = False) -> tuple[list[float], list[float]]:
    """`metric` of arms a and b; with paired=True only the seeds both arms have, in the same order (a run's
    seed is `info["seed"]` when recorded, else its position)."""
    ra, rb = results.get(a, []), results.get(b, [])
    if not paired:
        return [r.metrics[metric] for r in ra], [r.metrics[metric] for r in rb]
    bs = {_seed_of(r, i): r.metrics[metric] for i, r in enumerate(rb)}
    pairs = [(r.metrics[metric], bs[s]) for i, r in enumerate(ra) if (s := _seed_of(r, i)) in bs]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _t():
    from scipy import stats

    return stats.t


@dataclass
class Difference:
    """gain = oriented mean difference (> 0: the technique is better), its standard error and the Student-t
    degrees of freedom: Welch–Satterthwaite for two independent samples, n − 1 for paired differences or a
    single sample. A zero standard error (identical values) makes the difference exact."""
    gain: float
    se: float
    df: float
    n: tuple[int, ...]
    test: str                                   # "Welch t", "paired t", "one-sample t"

    @property
    def ok(self) -> bool:
        return min(self.n) >= 2 and math.isfinite(self.gain)

    def t(self, margin: float = 0.0) -> float:
        d = self.gain - margin
        if self.se > 0:
            return d / self.se
        return math.inf if d > 0 else -math.inf if d < 0 else 0.0

    def p_greater(self, margin: float = 0.0) -> float:
        """One-sided p-value of H1: gain > margin."""
        t = self.t(margin)
        if not math.isfinite(t):
            return 0.0 if t > 0 else 1.0
        if self.se == 0:
            return 1.0
        return float(_t().sf(t, self.df))

    def p_less(self, margin: float = 0.0) -> float:
        """One-sided p-value of H1: gain < margin."""
        t = self.t(margin)
        if not math.isfinite(t):
            return 0.0 if t < 0 else 1.0
        if self.se == 0:
            return 1.0
        return float(_t().cdf(t, self.df))

    def t_crit(self, alpha: float = ALPHA) -> float:
        return float(_t().ppf(1 - alpha, self.df)) if self.se > 0 else 0.0

    def ci(self, alpha: float = ALPHA) -> tuple[float, float]:
        """The (1 − 2α) two-sided interval: both one-sided α bounds."""
        h = self.t_crit(alpha) * self.se
        return self.gain - h, self.gain + h

    def describe(self, margin: float = 0.0, alternative: str = "greater") -> str:
        t = self.t(margin)
        p = self.p_greater(margin) if alternative == "greater" else self.p_less(margin)
        num = "gain" if margin == 0 else f"(gain − {margin:g})" if margin > 0 else f"(gain + {-margin:g})"
        return (f"{self.test}: t = {num}/SE = {t:.3g}, df = {self.df:.3g}, one-sided p = {p:.3g}, "
                f"t crit = {self.t_crit():.3g}")

    def extra(self) -> dict:
        return {"gain": self.gain, "se": self.se, "df": self.df, "test": self.test}


def difference(baseline: Sequence[float], technique: Sequence[float], direction: Direction = "lower",
               paired: bool = False) -> Difference:
    """technique vs baseline, oriented so that gain > 0 means the technique is better."""
    b = np.asarray(baseline, dtype=float)
    t = np.asarray(technique, dtype=float)
    sign = 1.0 if direction == "higher" else -1.0
    if paired:
        n = min(len(b), len(t))
        d = sign * (t[:n] - b[:n])
        if n < 2:
            return Difference(float(d.mean()) if n else math.nan, math.nan, math.nan, (n,), "paired t")
        return Difference(float(d.mean()), float(d.std(ddof=1) / math.sqrt(n)), float(n - 1), (n,), "paired t")
    nb, nt = len(b), len(t)
    gain = sign * (float(t.mean()) - float(b.mean())) if nb and nt else math.nan
    if nb < 2 or nt < 2:
        return Difference(gain, math.nan, math.nan, (nb, nt), "Welch t")
    vb, vt = float(b.var(ddof=1)) / nb, float(t.var(ddof=1)) / nt
    se = math.sqrt(vb + vt)
    den = (vb ** 2 / (nb - 1) if vb else 0.0) + (vt ** 2 / (nt - 1) if vt else 0.0)
    df = (vb + vt) ** 2 / den if den > 0 else float(nb + nt - 2)
    return Difference(gain, se, df, (nb, nt), "Welch t")


def _decide(d: Difference, margin: float, alpha: float) -> str:
    if d.p_greater(margin) < alpha:
        return REPRODUCED
    if d.p_less(margin) < alpha:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def _too_few(d: Difference) -> str:
    what = "paired seeds" if d.test == "paired t" else "seeds per arm"
    return f"needs ≥2 {what} (got {', '.join(map(str, d.n))})"


# --------------------------------------------------------------------------------------------- verdicts
def compare(baseline: Sequence[float], technique: Sequence[float], direction: Direction = "lower",
            min_effect: float = 0.0, paired: bool = False, alpha: float = ALPHA) -> Verdict:
    """One-sided t-test of the technique's gain over the baseline (see the module docstring).

    gain = mean(baseline − technique) if lower is better, else mean(technique − baseline);
    reproduced      if H1: gain > min_effect is significant at α (Welch, or paired t with paired=True);
    not reproduced  if H1: gain < min_effect is significant at α;
    inconclusive    otherwise, or with fewer than 2 seeds per arm (2 pairs when paired)."""
    mb, mt = mean_std(baseline), mean_std(technique)
    d = difference(baseline, technique, direction, paired)
    if not d.ok:
        return Verdict(INCONCLUSIVE, _too_few(d), mb, mt, d.extra())
    v = _decide(d, min_effect, alpha)
    better = "lower" if direction == "lower" else "higher"
    rule = (f"gain ({better} is better) = {d.gain:.4g} ± {d.se:.3g} (SE); H1: gain > {min_effect:g}, "
            f"{d.describe(min_effect)} (α = {alpha:g}) -> {v}")
    return Verdict(v, rule, mb, mt, {**d.extra(), "p": d.p_greater(min_effect)})


def noninferior(baseline: Sequence[float], technique: Sequence[float], tol: float, direction: Direction = "lower",
                paired: bool = False, alpha: float = ALPHA) -> Verdict:
    """"Matches or beats": reproduced if H1: gain > −tol is significant (the technique is at most tol worse);
    not reproduced if H1: gain < −tol is (it is worse by more than tol)."""
    mb, mt = mean_std(baseline), mean_std(technique)
    d = difference(baseline, technique, direction, paired)
    if not d.ok:
        return Verdict(INCONCLUSIVE, _too_few(d), mb, mt, d.extra())
    v = _decide(d, -tol, alpha)
    lo, _ = d.ci(alpha)
    better = "lower" if direction == "lower" else "higher"
    rule = (f"non-inferiority: gain ({better} is better) = {d.gain:.4g} ± {d.se:.3g} (SE), one-sided "
            f"{100 * (1 - alpha):g}% lower bound {lo:.4g} vs −tol = {-tol:.4g}; {d.describe(-tol)} -> {v}")
    return Verdict(v, rule, mb, mt, {**d.extra(), "tol": tol, "lower_bound": lo, "p": d.p_greater(-tol)})


def equivalent(baseline: Sequence[float], technique: Sequence[float], tol: float, paired: bool = False,
               alpha: float = ALPHA) -> Verdict:
    """"Matches": TOST on diff = technique − baseline. reproduced if the (1 − 2α) CI of diff lies inside
    (−tol, tol), i.e. both H1: diff > −tol and H1: diff < tol are significant; not reproduced if H1: diff > tol
    or H1: diff < −tol is significant; inconclusive otherwise."""
    mb, mt = mean_std(baseline), mean_std(technique)
    d = difference(baseline, technique, "higher", paired)          # gain = technique − baseline
    if not d.ok:
        return Verdict(INCONCLUSIVE, _too_few(d), mb, mt, {**d.extra(), "diff": d.gain})
    p_lo, p_hi = d.p_greater(-tol), d.p_less(tol)
    if max(p_lo, p_hi) < alpha:
        v = REPRODUCED
    elif d.p_greater(tol) < alpha or d.p_less(-tol) < alpha:
        v = NOT_REPRODUCED
    else:
        v = INCONCLUSIVE
    lo, hi = d.ci(alpha)
    rule = (f"TOST ({d.test}): technique − baseline = {d.gain:+.4g} ± {d.se:.3g} (SE), "
            f"{100 * (1 - 2 * alpha):g}% CI [{lo:+.4g}, {hi:+.4g}] vs ±{tol:g}; t = {d.t(-tol):.3g} and "
            f"{d.t(tol):.3g}, df = {d.df:.3g}, p = {max(p_lo, p_hi):.3g} -> {v}")
    return Verdict(v, rule, mb, mt, {**d.extra(), "diff": d.gain, "tol": tol, "ci": (lo, hi),
                                     "p": max(p_lo, p_hi)})


def exceeds(values: Sequence[float], threshold: float, direction: Direction = "higher", what: str = "mean",
            alpha: float = ALPHA) -> Verdict:
    """One-sample t-test: reproduced if the mean is significantly above (direction="higher") or below
    ("lower") `threshold`, not reproduced if it is significantly on the other side."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    sign = 1.0 if direction == "higher" else -1.0
    m = mean_std(x)
    if n < 2:
        return Verdict(INCONCLUSIVE, f"{what}: needs ≥2 seeds (got {n})", (threshold, 0.0), m)
    d = Difference(sign * (float(x.mean()) - threshold), float(x.std(ddof=1) / math.sqrt(n)), float(n - 1),
                   (n,), "one-sample t")
    v = _decide(d, 0.0, alpha)
    rule = (f"{what} {m[0]:.4g} ± {d.se:.3g} (SE) {'>' if sign > 0 else '<'} {threshold:.4g}? "
            f"{d.describe()} -> {v}")
    return Verdict(v, rule, (threshold, 0.0), m, {**d.extra(), "p": d.p_greater()})


def trend_verdict(xs: Sequence[float], ys_per_x: Sequence[Sequence[float]], direction: Direction, what: str,
                  alpha: float = ALPHA) -> Verdict:
    """Monotone trend over an ordered sweep (e.g. loss vs steps): least-squares line through all (x, y)
    points; t = slope/SE with n − 2 degrees of freedom, one-sided in the claimed direction."""
    X = np.concatenate([[x] * len(ys) for x, ys in zip(xs, ys_per_x)]).astype(float)
    Y = np.concatenate([np.asarray(ys, float) for ys in ys_per_x])
    if len(set(X)) < 2 or len(Y) < 3:
        return Verdict(INCONCLUSIVE, f"{what}: too few points")
    A = np.stack([X, np.ones_like(X)], 1)
    coef, *_ = np.linalg.lstsq(A, Y, rcond=None)
    dof = len(Y) - 2
    resid = Y - A @ coef
    s2 = float(resid @ resid) / dof
    se = math.sqrt(s2 / max(float(((X - X.mean()) ** 2).sum()), 1e-12))
    slope = float(coef[0])
    want = -1 if direction == "lower" else 1
    d = Difference(want * slope, se, float(dof), (len(Y),), "slope t")
    v = _decide(d, 0.0, alpha)
    first, last = mean_std(ys_per_x[0]), mean_std(ys_per_x[-1])
    rule = (f"{what}: slope {slope:.4g} ± {se:.3g} (SE), want {'<' if want < 0 else '>'} 0; t = {d.t():.3g}, "
            f"df = {dof}, one-sided p = {d.p_greater():.3g}, t crit = {d.t_crit(alpha):.3g} -> {v}")
    return Verdict(v, rule, first, last, {"slope": slope, "se": se, "df": dof, "p": d.p_greater()})


def combine(verdicts: Sequence[Verdict] | dict[str, Verdict], how: Literal["all", "any"] = "all", what: str = "",
            baseline: Optional[tuple[float, float]] = None, technique: Optional[tuple[float, float]] = None,
            extra: Optional[dict] = None) -> Verdict:
    """One claim made of several sub-claims.

    how="all" (every part must hold): reproduced iff all parts are, not reproduced if any part is not,
    inconclusive otherwise. how="any": reproduced if any part is, not reproduced iff all parts are not.
    The parts may be named ({name: verdict}); the combined rule lists each part's rule."""
    named = dict(verdicts) if isinstance(verdicts, dict) else {str(i + 1): v for i, v in enumerate(verdicts)}
    if not named:
        return Verdict(INCONCLUSIVE, f"{what}: no parts")
    kinds = [v.verdict for v in named.values()]
    if how == "all":
        v = REPRODUCED if all(k == REPRODUCED for k in kinds) else \
            NOT_REPRODUCED if NOT_REPRODUCED in kinds else INCONCLUSIVE
    elif how == "any":
        v = REPRODUCED if REPRODUCED in kinds else \
            NOT_REPRODUCED if all(k == NOT_REPRODUCED for k in kinds) else INCONCLUSIVE
    else:
        raise ValueError(f"combine: how={how!r}: choose all or any")
    first = next(iter(named.values()))
    parts = "; ".join(f"{k}: ({p.rule})" for k, p in named.items())
    rule = (f"{what}: " if what else "") + parts + f" -> {how} must hold: {v}"
    ex = {k: {"verdict": p.verdict, **p.extra} for k, p in named.items()}
    ex.update(extra or {})
    return Verdict(v, rule, baseline if baseline is not None else first.baseline,
                   technique if technique is not None else first.technique, ex)
