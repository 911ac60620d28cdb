"""In-context regression: data, prompt/parse round trip, number parsing, baselines, regret."""
import math

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn (the eval extra) is not installed")

from lmlab.eval.icl_regression import (baseline_predict, build_prompt, cumulative_regret, friedman, llm_predict,
                                       mae, parse_number, parse_prompt)


def test_friedman_shapes_noise_and_oracle():
    d = friedman(1, seed=3)
    assert d.X_train.shape == (64, 5) and d.X_test.shape == (32, 5)
    # Friedman #1: f = 10 sin(π x0 x1) + 20 (x2 − .5)² + 10 x3 + 5 x4
    X = d.X_test
    f = 10 * np.sin(np.pi * X[:, 0] * X[:, 1]) + 20 * (X[:, 2] - 0.5) ** 2 + 10 * X[:, 3] + 5 * X[:, 4]
    np.testing.assert_allclose(d.f_test, f)
    resid = np.concatenate([d.y_train - d.f_train, d.y_test - d.f_test])
    assert resid.std() == pytest.approx(0.5, rel=0.25)
    for w in (2, 3):
        assert friedman(w).X_train.shape == (64, 4)


def test_prompt_parse_round_trip():
    d = friedman(2, n_train=6, n_test=1, seed=1)
    p = build_prompt(d.X_train, d.y_train, d.X_test[0])
    assert p.startswith("Feature 0: ") and p.endswith("Feature 3: %.2f\nOutput:" % d.X_test[0, 3])
    assert p.count("Output:") == 7 and "\n\n" in p
    X, Y, q = parse_prompt(p)
    np.testing.assert_allclose(X, np.round(d.X_train, 2), atol=1e-9)
    np.testing.assert_allclose(Y, np.round(d.y_train, 2), atol=1e-9)
    np.testing.assert_allclose(q, np.round(d.X_test[0], 2), atol=1e-9)


@pytest.mark.parametrize("text,val", [(" 12.53\n\nFeature 0: 0.1", 12.53), (" -3.5", -3.5), ("1e3", 1000.0),
                                      (" .75 or so", 0.75), ("approximately 42", 42.0), (" 7.", 7.0),
                                      ("I don't know", math.nan), ("", math.nan)])
def test_parse_number(text, val):
    got = parse_number(text)
    assert (math.isnan(got) and math.isnan(val)) or got == pytest.approx(val)


class EchoNearest:
    """A 'model' that answers with the Output of the nearest example in its prompt (1-NN in context)."""
    name = "nn-in-context"

    def generate(self, prompts, gen):
        outs = []
        for p in prompts:
            X, Y, q = parse_prompt(p)
            outs.append([f" {Y[np.argmin(((X - q) ** 2).sum(1))]:.2f}\n"])
        return outs


def test_llm_predict_through_a_backend_equals_1nn_baseline():
    d = friedman(1, n_train=32, n_test=8, seed=0)
    got = llm_predict(EchoNearest(), d.X_train, d.y_train, d.X_test, batch_size=3)
    from sklearn.neighbors import KNeighborsRegressor
    ref = KNeighborsRegressor(1).fit(np.round(d.X_train, 2), np.round(d.y_train, 2)).predict(np.round(d.X_test, 2))
    np.testing.assert_allclose(got, ref, atol=1e-9)


def test_baselines_beat_the_mean_and_more_data_helps():
    d = friedman(1, n_train=200, n_test=100, seed=0)
    m_mean = mae(baseline_predict("mean", d.X_train, d.y_train, d.X_test), d.y_test)
    m_lin = mae(baseline_predict("linear", d.X_train, d.y_train, d.X_test), d.y_test)
    m_gb = mae(baseline_predict("gradient_boosting", d.X_train, d.y_train, d.X_test), d.y_test)
    assert m_lin < 0.6 * m_mean and m_gb < m_lin
    small = mae(baseline_predict("linear", d.X_train[:8], d.y_train[:8], d.X_test), d.y_test)
    assert m_lin < small
    assert mae(np.array([np.nan, 1.0]), np.array([0.0, 0.0]), fallback=0.0) == 0.5


def test_cumulative_regret_sublinear_for_a_consistent_learner():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(120, 3))
    f = X @ np.array([3.0, -2.0, 1.0]) + 0.5
    y = f + rng.normal(0, 0.5, size=120)
    lin = cumulative_regret(lambda a, b, c: baseline_predict("linear", a, b, c), X, y, f, start=5)
    mean = cumulative_regret(lambda a, b, c: baseline_predict("mean", a, b, c), X, y, f, start=5)
    assert lin[-1] < mean[-1]
    half = len(lin) // 2
    # per-step regret shrinks for linear regression on linear data, not for the constant predictor
    assert (lin[-1] - lin[half]) < 0.5 * lin[half]
    assert (mean[-1] - mean[half]) > 0.5 * mean[half]   # linear growth: about equal halves
