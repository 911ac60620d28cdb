"""Fine-grained MoE scaling law (Krajewski et al. 2024, eq. 4):

    L(N, D, G) = c + (g / G^γ + a) / N^α + b / D^β

N = active non-embedding parameters, D = training tokens, G = granularity. Fitted by non-linear least squares
on log-parametrised positive coefficients (scipy), from a few random restarts; `plot_law` draws the measured
points and the fitted curves (loss vs D for each (N, G)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class LawFit:
    params: dict[str, float]
    rmse: float
    n_points: int

    def predict(self, N, D, G) -> np.ndarray:
        return law(np.asarray(N, float), np.asarray(D, float), np.asarray(G, float), **self.params)


def law(N, D, G, c, g, gamma, a, alpha, b, beta):
    return c + (g / G ** gamma + a) / N ** alpha + b / D ** beta


def fit_law(N, D, G, L, restarts: int = 8, seed: int = 0) -> LawFit:
    from scipy.optimize import least_squares

    N, D, G, L = (np.asarray(v, float) for v in (N, D, G, L))
    # Work with N, D rescaled to O(1) so exponents stay well conditioned; coefficients are mapped back.
    n0, d0 = float(np.median(N)), float(np.median(D))
    Nn, Dn = N / n0, D / d0

    def unpack(z):
        c, g, gam, a, al, b, be = np.exp(z)
        return c, g, gam, a, al, b, be

    def resid(z):
        c, g, gam, a, al, b, be = unpack(z)
        return c + (g / G ** gam + a) / Nn ** al + b / Dn ** be - L

    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        z0 = np.log([max(L.min() * 0.5, 1e-3), 0.3, 0.5, 0.3, 0.5, 0.5, 0.5]) + rng.normal(0, 0.5, 7)
        r = least_squares(resid, z0, bounds=(np.log([1e-4, 1e-6, 1e-3, 1e-6, 1e-3, 1e-6, 1e-3]),
                                             np.log([50, 50, 3, 50, 3, 50, 3])))
        if best is None or r.cost < best.cost:
            best = r
    c, g, gam, a, al, b, be = unpack(best.x)
    # Undo the rescaling: (g/G^γ + a)/(N/n0)^α = (g·n0^α/G^γ + a·n0^α)/N^α, likewise for D.
    params = {"c": c, "g": g * n0 ** al, "gamma": gam, "a": a * n0 ** al, "alpha": al, "b": b * d0 ** be, "beta": be}
    rmse = math.sqrt(float(np.mean(resid(best.x) ** 2)))
    return LawFit(params, rmse, int(L.size))


def plot_law(N, D, G, L, fit: LawFit, path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    N, D, G, L = (np.asarray(v, float) for v in (N, D, G, L))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    combos = sorted(set(zip(N.tolist(), G.tolist())))
    cmap = plt.get_cmap("viridis", max(len(combos), 2))
    for i, (n, gg) in enumerate(combos):
        m = (N == n) & (G == gg)
        ax.scatter(D[m], L[m], s=10, color=cmap(i), alpha=0.6)
        xs = np.geomspace(D[m].min(), D[m].max(), 50)
        ax.plot(xs, fit.predict(np.full_like(xs, n), xs, np.full_like(xs, gg)), color=cmap(i),
                label=f"N={n / 1e3:.0f}k, G={gg:g}")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("held-out loss")
    p = fit.params
    ax.set_title(f"L = {p['c']:.2f} + ({p['g']:.3g}/G^{p['gamma']:.2f} + {p['a']:.3g})/N^{p['alpha']:.2f}"
                 f" + {p['b']:.3g}/D^{p['beta']:.2f}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
