"""LLMs as in-context regressors (Vacareanu et al. 2024, "From Words to Numbers"): the model sees n (x, y)
examples of a regression problem written as plain text and continues "Output:" for a new x; the first number it
writes is its prediction. Compared with scikit-learn regressors fitted on the same n points.

Data: Friedman #1–#3 (`sklearn.datasets.make_friedman1/2/3`, noise 0.5, 64 train / 32 test by default; #1 with
its 5 informative features). The noise-free target f(x) is recovered by regenerating with noise=0 and the same
seed (sklearn draws X before the noise), which gives the oracle for regret.

Prompt, one block per example, blank line between blocks, values with 2 decimals:

    Feature 0: 0.55
    Feature 1: 0.72
    Output: 14.13

    Feature 0: 0.60
    Feature 1: 0.54
    Output:

Cumulative regret over a stream (x_t, y_t): R(T) = Σ_{t≤T} |ŷ_t − y_t| − |f(x_t) − y_t|, ŷ_t predicted from the
first t−1 points; sublinear R(T) means the learner approaches the oracle.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass
class RegressionData:
    X_train: np.ndarray      # (n_train, d)
    y_train: np.ndarray      # (n_train,)
    X_test: np.ndarray       # (n_test, d)
    y_test: np.ndarray       # (n_test,)
    f_train: np.ndarray      # noise-free targets
    f_test: np.ndarray
    name: str


def friedman(which: int = 1, n_train: int = 64, n_test: int = 32, noise: float = 0.5, seed: int = 0,
             n_features: int = 5) -> RegressionData:
    from sklearn import datasets
    if which not in (1, 2, 3):
        raise ValueError(f"friedman: which must be 1, 2 or 3, got {which}")
    n = n_train + n_test
    make = {1: datasets.make_friedman1, 2: datasets.make_friedman2, 3: datasets.make_friedman3}[which]
    kw = {"n_features": n_features} if which == 1 else {}
    X, y = make(n_samples=n, noise=noise, random_state=seed, **kw)
    X0, f = make(n_samples=n, noise=0.0, random_state=seed, **kw)
    assert np.array_equal(X, X0)
    return RegressionData(X[:n_train], y[:n_train], X[n_train:], y[n_train:], f[:n_train], f[n_train:],
                          f"friedman{which}")


def format_example(x: Sequence[float], y: Optional[float] = None, decimals: int = 2) -> str:
    lines = [f"Feature {i}: {v:.{decimals}f}" for i, v in enumerate(x)]
    lines.append("Output:" if y is None else f"Output: {y:.{decimals}f}")
    return "\n".join(lines)


def build_prompt(X_train: np.ndarray, y_train: np.ndarray, x: Sequence[float], decimals: int = 2) -> str:
    blocks = [format_example(xi, yi, decimals) for xi, yi in zip(X_train, y_train)]
    return "\n\n".join(blocks + [format_example(x, None, decimals)])


def parse_prompt(prompt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of build_prompt: (X_train, y_train, x_query), values as written (rounded)."""
    X, Y, query = [], [], None
    for block in prompt.strip().split("\n\n"):
        feats = [float(m) for m in re.findall(r"Feature \d+: (\S+)", block)]
        out = re.search(r"Output:[ \t]*(\S+)?\s*$", block)
        if out and out.group(1) is not None:
            X.append(feats)
            Y.append(float(out.group(1)))
        else:
            query = feats
    return np.array(X), np.array(Y), np.array(query)


def parse_number(text: str) -> float:
    """The first number the model writes after "Output:" (nan if none): "  12.5\\n\\nFeature 0" -> 12.5."""
    m = NUMBER_RE.search(text)
    if m is None:
        return math.nan
    try:
        return float(m.group(0))
    except ValueError:
        return math.nan


def llm_predict(backend, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, batch_size: int = 4,
                max_new_tokens: int = 10) -> np.ndarray:
    """Greedy prediction for each test point; nan where no number came back."""
    from lmlab.backend import GenerationConfig
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=["\n"])
    prompts = [build_prompt(X_train, y_train, x) for x in X_test]
    outs: list[float] = []
    for i in range(0, len(prompts), batch_size):
        outs += [parse_number(r[0]) for r in backend.generate(prompts[i:i + batch_size], gen)]
    return np.array(outs)


BASELINES = ("linear", "ridge", "knn", "random_forest", "gradient_boosting", "mlp", "mean")


def make_baseline(name: str, seed: int = 0):
    from sklearn import ensemble, linear_model, neighbors, neural_network, pipeline, preprocessing, dummy
    if name == "linear":
        return linear_model.LinearRegression()
    if name == "ridge":
        return linear_model.Ridge(alpha=1.0)
    if name == "knn":
        return neighbors.KNeighborsRegressor(n_neighbors=5)
    if name == "random_forest":
        return ensemble.RandomForestRegressor(n_estimators=100, random_state=seed)
    if name == "gradient_boosting":
        return ensemble.GradientBoostingRegressor(random_state=seed)
    if name == "mlp":
        return pipeline.make_pipeline(preprocessing.StandardScaler(),
                                      neural_network.MLPRegressor((100,), max_iter=2000, random_state=seed))
    if name == "mean":
        return dummy.DummyRegressor(strategy="mean")
    raise ValueError(f"unknown baseline {name!r}; known: {BASELINES}")


def baseline_predict(name: str, X_train, y_train, X_test, seed: int = 0) -> np.ndarray:
    if name == "knn" and len(X_train) < 5:
        from sklearn.neighbors import KNeighborsRegressor
        return KNeighborsRegressor(n_neighbors=len(X_train)).fit(X_train, y_train).predict(X_test)
    return make_baseline(name, seed).fit(X_train, y_train).predict(X_test)


def mae(pred: np.ndarray, y: np.ndarray, fallback: Optional[float] = None) -> float:
    """Mean absolute error; unparsed (nan) predictions are replaced by `fallback` (e.g. the train mean)."""
    pred = np.asarray(pred, float)
    if fallback is not None:
        pred = np.where(np.isfinite(pred), pred, fallback)
    return float(np.mean(np.abs(pred - y)))


def cumulative_regret(predict: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], X: np.ndarray,
                      y: np.ndarray, f: np.ndarray, start: int = 2) -> np.ndarray:
    """R(T) for T = start..len(y): learner `predict(X_seen, y_seen, x_new[None]) -> (1,)` sees the first t points."""
    r, out = 0.0, []
    for t in range(start, len(y)):
        yhat = float(np.asarray(predict(X[:t], y[:t], X[t:t + 1])).reshape(-1)[0])
        if not math.isfinite(yhat):
            yhat = float(np.mean(y[:t]))
        r += abs(yhat - y[t]) - abs(f[t] - y[t])
        out.append(r)
    return np.array(out)
