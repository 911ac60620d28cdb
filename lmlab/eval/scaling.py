"""Scaling-law tools.

- `fit_power_law(x, y)`: y = a·x^(−b) (+ c with offset=True), with standard errors. Used by the optimal-LR,
  MoE granularity and model-collapse experiments.
- "Scaling optimal LR across token horizons" (Bjorck et al. 2024): for each token horizon D sweep the peak LR,
  fit loss as a quadratic in ln LR (diverged runs dropped), take the vertex as LR*(D), then fit
  LR*(D) = B·D^(−β) (the paper reports β ≈ 0.32 for its models) and transfer LR_long = LR_short·(D_long/D_short)^(−β).
  `fit_lr_star_nd` fits LR*(N, D) = C·N^(−α)·D^(−β) by least squares in log space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np


@dataclass
class PowerLawFit:
    a: float
    b: float
    c: float = 0.0
    se_a: float = math.nan
    se_b: float = math.nan
    se_c: float = math.nan
    r2: float = math.nan

    def __call__(self, x):
        return self.a * np.asarray(x, float) ** (-self.b) + self.c


def _loglinear(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float]:
    """ln y = ln a − b ln x by least squares: (a, b, se_a, se_b, r2 in log space)."""
    X = np.stack([np.ones_like(x), -np.log(x)], 1)
    ly = np.log(y)
    coef, *_ = np.linalg.lstsq(X, ly, rcond=None)
    resid = ly - X @ coef
    dof = max(len(x) - 2, 1)
    cov = (resid @ resid / dof) * np.linalg.pinv(X.T @ X)
    ss_tot = ((ly - ly.mean()) ** 2).sum()
    r2 = 1 - (resid @ resid) / ss_tot if ss_tot > 0 else 1.0
    a = math.exp(coef[0])
    return a, float(coef[1]), a * math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1]), float(r2)


def fit_power_law(x: Sequence[float], y: Sequence[float], offset: bool = False) -> PowerLawFit:
    """Fit y = a·x^(−b) (+ c). Without offset: exact least squares in log-log space. With offset: nonlinear
    least squares (scipy) started from the log-log fit of y − 0.9·min(y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    if len(x) < (4 if offset else 2):
        raise ValueError(f"fit_power_law: need at least {4 if offset else 2} finite points, got {len(x)}")
    if not offset:
        if (y <= 0).any():
            raise ValueError("fit_power_law: y must be > 0 without an offset")
        a, b, sa, sb, r2 = _loglinear(x, y)
        return PowerLawFit(a, b, 0.0, sa, sb, 0.0, r2)
    from scipy.optimize import curve_fit
    c0 = 0.9 * float(y.min()) if y.min() > 0 else float(y.min()) - 1e-3 * abs(float(np.ptp(y)) or 1.0)
    a0, b0, *_ = _loglinear(x, y - c0) if (y - c0 > 0).all() else (float(y.max()), 0.5, 0, 0, 0)
    f = lambda x_, a, b, c: a * x_ ** (-b) + c  # noqa: E731
    p, cov = curve_fit(f, x, y, p0=(a0, b0, c0), maxfev=20000)
    resid = y - f(x, *p)
    ss_tot = ((y - y.mean()) ** 2).sum()
    se = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else np.full(3, math.nan)
    return PowerLawFit(float(p[0]), float(p[1]), float(p[2]), float(se[0]), float(se[1]), float(se[2]),
                       float(1 - (resid @ resid) / ss_tot) if ss_tot > 0 else 1.0)


@dataclass
class QuadFit:
    lr_star: float                 # vertex exp(−q1 / (2 q2)), or the best swept LR when the fit has no minimum
    coef: tuple[float, float, float]   # loss ≈ q0 + q1·ln lr + q2·(ln lr)²
    used: list[tuple[float, float]] = field(default_factory=list)
    dropped: list[tuple[float, float]] = field(default_factory=list)
    vertex_ok: bool = True         # convex fit with the vertex inside the swept range
    best_loss: float = math.nan


def fit_quadratic_lnlr(lrs: Sequence[float], losses: Sequence[float], diverged: Optional[float] = None,
                       window: Optional[int] = None) -> QuadFit:
    """Quadratic of loss in ln LR; LR* is its vertex. Runs with a non-finite loss or loss > `diverged` are
    dropped; `window` keeps only that many points around the best LR (the quadratic is a local model)."""
    pts = sorted(zip(map(float, lrs), map(float, losses)))
    dropped = [(lr, l) for lr, l in pts if not math.isfinite(l) or (diverged is not None and l > diverged)]
    used = [p for p in pts if p not in dropped]
    if len(used) < 3:
        raise ValueError(f"fit_quadratic_lnlr: need ≥3 non-diverged runs, got {len(used)}")
    if window is not None and len(used) > window:
        i = int(np.argmin([l for _, l in used]))
        lo = min(max(i - window // 2, 0), len(used) - window)
        dropped += used[:lo] + used[lo + window:]
        used = used[lo:lo + window]
    x = np.log([lr for lr, _ in used])
    y = np.array([l for _, l in used])
    q2, q1, q0 = np.polyfit(x, y, 2)
    best_lr, best = min(used, key=lambda p: p[1])
    if q2 > 0:
        v = -q1 / (2 * q2)
        ok = x.min() <= v <= x.max()
        lr_star = math.exp(v) if ok else best_lr
    else:
        ok, lr_star = False, best_lr
    return QuadFit(lr_star, (float(q0), float(q1), float(q2)), used, dropped, ok, float(best))


def fit_lr_horizon(horizons: Sequence[float], lr_stars: Sequence[float]) -> PowerLawFit:
    """LR*(D) = B·D^(−β): returns PowerLawFit with a = B, b = β."""
    return fit_power_law(horizons, lr_stars)


def transfer_lr(lr_short: float, d_short: float, d_long: float, beta: float) -> float:
    """LR_long = LR_short·(D_long/D_short)^(−β)."""
    return lr_short * (d_long / d_short) ** (-beta)


def fit_lr_star_nd(n_params: Sequence[float], horizons: Sequence[float], lr_stars: Sequence[float]) -> dict:
    """LR*(N, D) = C·N^(−α)·D^(−β) by least squares on ln LR* = ln C − α ln N − β ln D."""
    N, D, L = (np.asarray(v, float) for v in (n_params, horizons, lr_stars))
    X = np.stack([np.ones_like(N), -np.log(N), -np.log(D)], 1)
    coef, *_ = np.linalg.lstsq(X, np.log(L), rcond=None)
    return {"C": float(math.exp(coef[0])), "alpha": float(coef[1]), "beta": float(coef[2])}


def plot_lr_horizon(sweeps: dict[float, list[tuple[float, float]]], fits: dict[float, QuadFit],
                    law: Optional[PowerLawFit], path: str | Path, xlabel: str = "tokens D") -> Path:
    """Left: loss vs LR per horizon with the quadratic fits and vertices. Right: LR*(D) with the power law."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    cmap = plt.get_cmap("viridis")
    hs = sorted(sweeps)
    for i, h in enumerate(hs):
        col = cmap(i / max(len(hs) - 1, 1))
        pts = sorted(p for p in sweeps[h] if math.isfinite(p[1]))
        if pts:
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=col, label=f"D={h:.3g}")
        f = fits.get(h)
        if f is not None:
            lx = np.linspace(math.log(f.used[0][0]), math.log(f.used[-1][0]), 50)
            q0, q1, q2 = f.coef
            ax1.plot(np.exp(lx), q0 + q1 * lx + q2 * lx**2, "-", color=col)
            ax1.axvline(f.lr_star, color=col, ls=":", lw=1)
    ax1.set_xscale("log"); ax1.set_xlabel("peak LR"); ax1.set_ylabel("final val loss"); ax1.legend(fontsize=7)
    xs = [h for h in hs if h in fits]
    ax2.loglog(xs, [fits[h].lr_star for h in xs], "o", label="LR* (vertex)")
    if law is not None:
        gx = np.geomspace(min(xs), max(xs), 50)
        ax2.loglog(gx, law(gx), "-", label=f"B·D^-β, β={law.b:.3f}±{law.se_b:.3f}")
    ax2.set_xlabel(xlabel); ax2.set_ylabel("optimal LR"); ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lr_horizon_sweep(base_cfg, lrs: Sequence[float], horizons: Sequence[int], seed: int = 0,
                     data=None, out_dir: Optional[Path] = None,
                     train_fn: Optional[Callable] = None) -> dict[int, list[tuple[float, float]]]:
    """Train base_cfg for every (horizon in steps, peak LR) pair with the same seed; returns
    {horizon_steps: [(lr, final mean val loss)]}. `train_fn(cfg, out_dir, data=...)` defaults to the trainer."""
    if train_fn is None:
        from lmlab.train.trainer import train as train_fn
    if data is None:
        from lmlab.data.pipeline import load_data
        data = load_data(base_cfg.data)
    out: dict[int, list[tuple[float, float]]] = {}
    for h in horizons:
        for lr in lrs:
            tc = base_cfg.train.model_copy(update={"steps": int(h), "lr": float(lr), "seed": seed,
                                                   "eval_interval": int(h)})
            cfg = base_cfg.model_copy(update={"train": tc})
            try:
                loss = float(train_fn(cfg, None, data=data).val_loss)
            except RuntimeError as e:
                if type(e).__name__ != "TrainingError":
                    raise
                loss = math.nan      # the trainer aborted on non-finite losses: a diverged run
            out.setdefault(int(h), []).append((float(lr), loss))
    return out
