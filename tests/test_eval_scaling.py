"""Scaling-law fitters recover known constants from synthetic data."""
import math

import numpy as np
import pytest

from lmlab.eval.scaling import (fit_lr_horizon, fit_lr_star_nd, fit_power_law, fit_quadratic_lnlr,
                                lr_horizon_sweep, plot_lr_horizon, transfer_lr)


def test_power_law_exact_and_noisy():
    x = np.geomspace(1e3, 1e7, 12)
    f = fit_power_law(x, 3.0 * x ** -0.32)
    assert (f.a, f.b) == (pytest.approx(3.0, rel=1e-10), pytest.approx(0.32, rel=1e-10)) and f.r2 == pytest.approx(1)
    rng = np.random.default_rng(0)
    bs = []
    for s in range(20):
        y = 3.0 * x ** -0.32 * np.exp(rng.normal(0, 0.05, x.size))
        g = fit_power_law(x, y)
        bs.append(g.b)
        assert abs(g.b - 0.32) < 4 * g.se_b + 1e-9
    assert np.mean(bs) == pytest.approx(0.32, abs=0.01)
    se_emp = np.std(bs, ddof=1)
    assert g.se_b == pytest.approx(se_emp, rel=0.6)        # reported SE has the right size


def test_power_law_with_offset():
    x = np.geomspace(10, 1e5, 25)
    y = 50.0 * x ** -0.45 + 1.7
    f = fit_power_law(x, y, offset=True)
    assert (f.a, f.b, f.c) == (pytest.approx(50, rel=1e-4), pytest.approx(0.45, rel=1e-4), pytest.approx(1.7, rel=1e-4))
    with pytest.raises(ValueError, match="at least 4"):
        fit_power_law(x[:3], y[:3], offset=True)


def test_quadratic_vertex_and_divergence_dropping():
    lrs = np.geomspace(1e-4, 1e-1, 9)
    true_star = 3e-3
    loss = 2.0 + 0.1 * (np.log(lrs) - math.log(true_star)) ** 2
    loss[-1] = float("nan")                     # diverged
    loss[-2] = 50.0                             # blew up
    q = fit_quadratic_lnlr(lrs, loss, diverged=10.0)
    assert q.lr_star == pytest.approx(true_star, rel=1e-8) and q.vertex_ok
    assert len(q.dropped) == 2 and len(q.used) == 7
    qw = fit_quadratic_lnlr(lrs, loss, diverged=10.0, window=5)
    assert len(qw.used) == 5 and qw.lr_star == pytest.approx(true_star, rel=1e-8)
    # monotone losses: no interior minimum -> falls back to the best swept LR and says so
    qm = fit_quadratic_lnlr(lrs[:5], 3.0 - 0.1 * np.arange(5))
    assert not qm.vertex_ok and qm.lr_star == pytest.approx(lrs[4])
    with pytest.raises(ValueError, match="≥3"):
        fit_quadratic_lnlr([1e-3, 1e-2], [1.0, 2.0])


def test_lr_horizon_law_and_transfer():
    D = np.array([1e8, 4e8, 1.6e9, 6.4e9])
    stars = 2.0 * D ** -0.32
    law = fit_lr_horizon(D, stars)
    assert law.b == pytest.approx(0.32) and law.a == pytest.approx(2.0)
    assert transfer_lr(stars[0], D[0], D[-1], law.b) == pytest.approx(stars[-1])
    N = np.array([1e6, 1e6, 4e6, 4e6, 1.6e7])
    Dn = np.array([1e8, 1e9, 1e8, 1e9, 3e8])
    nd = fit_lr_star_nd(N, Dn, 0.5 * N ** -0.2 * Dn ** -0.3)
    assert (nd["C"], nd["alpha"], nd["beta"]) == (pytest.approx(0.5), pytest.approx(0.2), pytest.approx(0.3))


def test_sweep_runner_with_synthetic_trainer_recovers_beta(tmp_path):
    """The sweep + per-horizon quadratic + power law pipeline on a trainer whose optimum is known:
    loss(lr, T) = 1 + (ln lr − ln(0.05·T^−0.4))², divergence (nan) above lr = 1."""
    class Res:
        def __init__(self, v):
            self.val_loss = v

    def fake_train(cfg, out_dir, data=None):
        lr, T = cfg.train.lr, cfg.train.steps
        if lr > 1.0:
            return Res(float("nan"))
        return Res(1 + (math.log(lr) - math.log(0.05 * T ** -0.4)) ** 2)

    from lmlab.config import RunConfig
    cfg = RunConfig()
    lrs = np.geomspace(1e-4, 2.0, 12)
    sweeps = lr_horizon_sweep(cfg, lrs, [50, 200, 800, 3200], data=object(), train_fn=fake_train)
    fits = {h: fit_quadratic_lnlr(*zip(*pts)) for h, pts in sweeps.items()}
    assert all(len(f.dropped) == 1 for f in fits.values())
    law = fit_lr_horizon(list(fits), [f.lr_star for f in fits.values()])
    assert law.b == pytest.approx(0.4, rel=1e-6)
    p = plot_lr_horizon(sweeps, fits, law, tmp_path / "lr.png", xlabel="steps")
    assert p.stat().st_size > 5000
