"""Model collapse as a change of scaling laws (Dohmatob et al., 2024): error curves and scaling fits.

The theory's learner (Hutter, 2021) memorises: after T training samples it answers item i correctly iff i
was seen. Test items follow the true law p; training samples follow q (clean: q = p; synthetic: a
tail-truncated generation, see lmlab.data.zipf). Test error

    E(T) = Σ_i p_i · (1 − q_i)^T                                   (expected_error, exact)
    clean Zipf(β):        E(T) ≍ T^(−c),  c = 1 − 1/β               (a scaling law)
    top-k truncated q:    E(T) → Σ_{i>k} p_i  as T → ∞               (a plateau: the law "bends")
    mixing a fraction π of clean data back in:  E(T) ≈ Σ_{i>k} p_i (1 − π p_i)^T → 0 again (slower)
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def expected_error(test_probs: np.ndarray, train_probs: np.ndarray, T: int) -> float:
    """Exact E(T) = Σ p_i (1 − q_i)^T, computed in log space for large T."""
    q = np.clip(train_probs, 0.0, 1.0)
    with np.errstate(divide="ignore"):
        miss = np.exp(T * np.log1p(-q))
    return float((test_probs * miss).sum())


def error_curve(test_probs: np.ndarray, train_probs: np.ndarray, Ts: Sequence[int],
                rng: np.random.Generator) -> list[float]:
    """Monte-Carlo memoriser error at each T (nested: the first T samples of one stream)."""
    Ts = sorted(int(t) for t in Ts)
    seen = np.zeros(len(test_probs), dtype=bool)
    out, drawn = [], 0
    for T in Ts:
        new = rng.choice(len(train_probs), size=T - drawn, p=train_probs)
        seen[new] = True
        drawn = T
        out.append(float(test_probs[~seen].sum()))
    return out


def fit_power_law(T: Sequence[float], E: Sequence[float]) -> dict:
    """OLS of log E = log a − c·log T. Returns a, c and the standard error of c."""
    x, y = np.log(np.asarray(T, float)), np.log(np.asarray(E, float))
    A = np.stack([np.ones_like(x), -x], 1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    dof = max(len(x) - 2, 1)
    se = math.sqrt(float(resid @ resid) / dof / max(float(((x - x.mean()) ** 2).sum()), 1e-12))
    return {"a": float(math.exp(coef[0])), "c": float(coef[1]), "c_se": se}


def fit_plateau(T: Sequence[float], E: Sequence[float], grid: int = 200) -> dict:
    """E = E_inf + a·T^(−c): grid over E_inf ∈ [0, min E), power-law OLS on E − E_inf, least squares in
    log E. Returns E_inf, a, c, and the log-space RMSE."""
    T, E = np.asarray(T, float), np.asarray(E, float)
    best = None
    for e_inf in np.linspace(0.0, E.min() * (1 - 1e-3), grid):
        f = fit_power_law(T, E - e_inf)
        pred = e_inf + f["a"] * T ** (-f["c"])
        rmse = float(np.sqrt(np.mean((np.log(pred) - np.log(E)) ** 2)))
        if best is None or rmse < best["rmse"]:
            best = {"E_inf": float(e_inf), "a": f["a"], "c": f["c"], "rmse": rmse}
    return best


def theory_exponent(beta: float) -> float:
    return 1.0 - 1.0 / beta
