"""Verdict rules of the evaluation experiments on synthetic arm results (the runs themselves are in reproduce)."""
import math

import numpy as np
import pytest

from lmlab.experiments.base import INCONCLUSIVE, REPRODUCED, ArmResult
from lmlab.registry import EXPERIMENTS


def _get(name):
    import lmlab.experiments.evaluation  # noqa: F401  (registers)
    return EXPERIMENTS.get(name)


def test_lr_horizon_verdict_recovers_beta():
    exp = _get("lr_horizon")
    rng = np.random.default_rng(0)
    results = {}
    for arm in exp.arms:
        D = int(arm[2:]) * 8 * 64
        results[arm] = [ArmResult({"ln_lr_star": math.log(2.0 * D ** -0.3) + rng.normal(0, 0.01), "tokens": D,
                                   "vertex_ok": 1.0}) for _ in range(3)]
    v = exp.decide(results)
    assert v.verdict == REPRODUCED
    assert v.extra["beta"] == pytest.approx(0.3, abs=0.03) and "β" in v.rule
    flat = {a: [ArmResult({"ln_lr_star": math.log(0.02) + rng.normal(0, 0.05), "tokens": int(a[2:]) * 512,
                           "vertex_ok": 1.0}) for _ in range(3)] for a in exp.arms}
    assert exp.decide(flat).verdict == INCONCLUSIVE


def test_icl_verdict_reports_where_the_llm_loses():
    exp = _get("icl_regression")
    results = {}
    for arm in exp.arms:
        n = int(arm[2:])
        m = {"mae_llm": 4.0 / math.log2(2 * n), "parse_rate": 1.0, "mae_linear": 0.5, "mae_knn": 3.0,
             "mae_random_forest": 2.5, "mae_gradient_boosting": 2.0, "mae_mean": 4.0}
        results[arm] = [ArmResult(dict(m, mae_llm=m["mae_llm"] + 0.01 * s)) for s in range(3)]
    v = exp.decide(results)
    assert v.verdict == REPRODUCED
    assert "beats ['knn', 'random_forest', 'gradient_boosting', 'mean']" in v.rule
    assert "loses to ['linear']" in v.rule
