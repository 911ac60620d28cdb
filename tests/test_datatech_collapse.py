"""Tale of Tails: Zipf generator, tail truncation, generation-k data, memoriser error and scaling fits."""
from __future__ import annotations

import numpy as np
import pytest

from lmlab.data import zipf as Z
from lmlab.eval import collapse as C


def test_zipf_probs_and_sampler():
    p = Z.zipf_probs(1000, 1.5)
    assert p.sum() == pytest.approx(1.0) and np.all(np.diff(p) < 0)
    assert p[0] / p[9] == pytest.approx(10 ** 1.5)
    x = Z.sample(Z.zipf_probs(20, 2.0), 200_000, np.random.default_rng(0))
    freq = np.bincount(x, minlength=20) / len(x)
    np.testing.assert_allclose(freq, Z.zipf_probs(20, 2.0), atol=3e-3)
    with pytest.raises(ValueError, match="beta"):
        Z.zipf_probs(10, 0)


def test_truncation_top_k_and_top_p():
    p = Z.zipf_probs(100, 2.0)
    tk = Z.truncate(p, top_k=10)
    assert np.count_nonzero(tk) == 10 and tk.sum() == pytest.approx(1)
    np.testing.assert_allclose(tk[:10], p[:10] / p[:10].sum())
    tp = Z.truncate(p, top_p=0.9)
    n = int(np.argmax(np.cumsum(p) >= 0.9)) + 1  # smallest prefix with mass ≥ 0.9
    assert np.count_nonzero(tp) == n and p[:n].sum() >= 0.9 > p[:n - 1].sum()
    assert Z.tail_mass(p, 10) == pytest.approx(p[10:].sum())
    # truncation follows rank, not index
    q = np.array([0.1, 0.5, 0.4])
    np.testing.assert_allclose(Z.truncate(q, top_k=1), [0, 1, 0])


def test_generations_lose_the_tail_monotonically():
    rng = np.random.default_rng(0)
    p = Z.zipf_probs(5000, 1.8)
    supports = [np.count_nonzero(Z.generation(p, k, 20_000, rng, top_p=0.99)) for k in range(4)]
    assert supports[0] == 5000 and all(a > b for a, b in zip(supports, supports[1:]))
    g1 = Z.generation(p, 1, 20_000, np.random.default_rng(1), top_k=50)
    assert np.count_nonzero(g1) <= 50
    m = Z.mixed(p, g1, 0.3)
    assert m.sum() == pytest.approx(1) and np.all(m[g1 == 0] == 0.3 * p[g1 == 0])


def test_monte_carlo_error_matches_exact_expectation():
    p = Z.zipf_probs(2000, 2.0)
    q = Z.truncate(p, top_k=200)
    Ts = [10, 100, 1000, 10_000]
    for train in (p, q):
        mc = np.mean([C.error_curve(p, train, Ts, np.random.default_rng(s)) for s in range(200)], axis=0)
        exact = [C.expected_error(p, train, T) for T in Ts]
        np.testing.assert_allclose(mc, exact, rtol=0.03)
    assert C.expected_error(p, q, 10**9) == pytest.approx(Z.tail_mass(p, 200), rel=1e-9)


def test_scaling_fits_recover_known_laws():
    T = np.logspace(1, 6, 12)
    f = C.fit_power_law(T, 3.0 * T ** -0.4)
    assert f["c"] == pytest.approx(0.4, abs=1e-9) and f["a"] == pytest.approx(3.0, rel=1e-9)
    g = C.fit_plateau(T, 0.01 + 2.0 * T ** -0.5, grid=400)
    assert g["E_inf"] == pytest.approx(0.01, rel=0.02) and g["c"] == pytest.approx(0.5, abs=0.03)
    # the clean memoriser follows the theory's exponent c = 1 − 1/β
    beta = 2.0
    p = Z.zipf_probs(200_000, beta)
    Ts = np.logspace(2, 5, 8).astype(int)
    fit = C.fit_power_law(Ts, [C.expected_error(p, p, t) for t in Ts])
    assert fit["c"] == pytest.approx(C.theory_exponent(beta), abs=0.03)


def test_collapse_experiment_verdict_from_measured_curves(tmp_path):
    from lmlab.experiments import data_techniques as D
    from lmlab.registry import EXPERIMENTS

    exp = EXPERIMENTS.get("model_collapse_tails")
    res = {a: [exp.run(a, s, "quick", tmp_path) for s in range(2)] for a in ("clean", "topk")}
    v = exp.decide(res)
    assert v.verdict == "reproduced", v.rule
    plateau = res["topk"][0].metrics["plateau_theory"]
    assert plateau == pytest.approx(Z.tail_mass(Z.zipf_probs(D.COLLAPSE["quick"]["n"], 2.0), 100))
    for r in res["topk"]:
        assert r.metrics["test_error"] == pytest.approx(plateau, rel=0.1)
    # swapping the arms (no plateau in the "technique") must not reproduce
    assert exp.decide({"clean": res["clean"], "topk": res["clean"]}).verdict != "reproduced"
