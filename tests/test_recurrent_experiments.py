"""Architecture experiments: registered, arms at equal parameters where claimed, verdict rules computed from
the numbers (synthetic ArmResults)."""
from __future__ import annotations

import pytest

from lmlab.config import ModelConfig
from lmlab.experiments.architecture import (RANK_ARMS, _griffin_model, _griffin_verdict, _hyper_verdict, _params,
                                            _rank_verdict, _width_verdict, matched_lru_width)
from lmlab.experiments.base import ArmResult
from lmlab.registry import EXPERIMENTS


def test_registered():
    for name in ("hgrn2_expand", "griffin_hybrid", "hyper_connections", "bottleneck_rank", "bottleneck_width"):
        exp = EXPERIMENTS.get(name)
        assert exp.baseline in exp.arms and exp.technique in exp.arms


def test_hgrn2_arms_have_equal_params_and_griffin_is_matched():
    counts = {e: _params(ModelConfig(d_model=64, n_layer=2, n_head=4, vocab_size=2, layer_pattern=["hgrn2"],
                                     mixer_args={"hgrn2": {"expand": e}})) for e in (1, 8)}
    assert counts[1] == counts[8]
    w = matched_lru_width(64, 3, 4, 32)
    g = _params(ModelConfig(**_griffin_model(64, 3, 4, 32, w), vocab_size=2))
    t = _params(ModelConfig(d_model=64, n_layer=3, n_head=4, vocab_size=2))
    assert abs(g - t) / t < 0.01


def _res(arm_vals: dict[str, list[float]], key: str = "val_loss", extra=None):
    return {a: [ArmResult(metrics={key: v, **(extra(a) if extra else {})}) for v in vs] for a, vs in arm_vals.items()}


def test_griffin_parity_verdict():
    exp = EXPERIMENTS.get("griffin_hybrid")
    assert _griffin_verdict(exp, _res({"transformer": [4.0, 4.01, 3.99], "griffin": [4.03, 4.02, 4.04]})).verdict == "reproduced"
    assert _griffin_verdict(exp, _res({"transformer": [4.0, 4.01, 3.99], "griffin": [4.5, 4.52, 4.49]})).verdict == "not reproduced"


def test_hyper_verdict_needs_both_streams_to_win():
    exp = EXPERIMENTS.get("hyper_connections")
    base = [4.0, 4.01, 3.99]
    v = _hyper_verdict(exp, _res({"residual": base, "hc2": [3.8, 3.81, 3.79], "hc4": [3.7, 3.71, 3.69]}))
    assert v.verdict == "reproduced"
    # one stream clearly worse refutes "both beat the residual" (combine how="all"; the old ad-hoc rule said
    # inconclusive here); a noisy one leaves it open
    v = _hyper_verdict(exp, _res({"residual": base, "hc2": [4.2, 4.21, 4.19], "hc4": [3.7, 3.71, 3.69]}))
    assert v.verdict == "not reproduced"
    v = _hyper_verdict(exp, _res({"residual": base, "hc2": [3.6, 4.3, 3.9], "hc4": [3.7, 3.71, 3.69]}))
    assert v.verdict == "inconclusive"


def test_rank_trend_verdict():
    exp = EXPERIMENTS.get("bottleneck_rank")
    ranks = {"rank4": 4.0, "rank16": 16.0, "rank_half_d": 32.0, "rank_d": 64.0}
    loss = {"rank4": [5.0, 5.02, 4.98], "rank16": [4.6, 4.62, 4.58], "rank_half_d": [4.5, 4.52, 4.48],
            "rank_d": [4.4, 4.41, 4.39]}
    v = _rank_verdict(exp, _res(loss, extra=lambda a: {"head_rank": ranks[a]}))
    assert v.verdict == "reproduced" and v.extra["slope"] < 0
    flat = {a: [4.5, 4.6, 4.4] for a in RANK_ARMS}
    assert _rank_verdict(exp, _res(flat, extra=lambda a: {"head_rank": ranks[a]})).verdict == "inconclusive"


def test_width_verdict():
    exp = EXPERIMENTS.get("bottleneck_width")
    res = {"small": [ArmResult({"anisotropy": a, "hidden_eff_rank_frac": r}) for a, r in [(0.5, 0.3), (0.52, 0.31), (0.49, 0.29)]],
           "large": [ArmResult({"anisotropy": a, "hidden_eff_rank_frac": r}) for a, r in [(0.2, 0.6), (0.21, 0.61), (0.19, 0.59)]]}
    assert _width_verdict(exp, res).verdict == "reproduced"
    res["small"], res["large"] = res["large"], res["small"]
    assert _width_verdict(exp, res).verdict == "not reproduced"
