"""Verdict rules and the reproduce runner (with a fake, instant experiment)."""
import json
import math

import pytest

from lmlab.experiments.base import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, ArmResult, Experiment, compare,
                                    trend_verdict)
from lmlab.registry import EXPERIMENTS


def test_compare_rules():
    assert compare([3.0, 3.1, 2.9], [2.0, 2.1, 1.9]).verdict == REPRODUCED
    assert compare([2.0, 2.1, 1.9], [3.0, 3.1, 2.9]).verdict == NOT_REPRODUCED
    assert compare([3.0, 2.0, 4.0], [2.9, 2.0, 3.9]).verdict == INCONCLUSIVE
    assert compare([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], direction="higher").verdict == REPRODUCED
    assert compare([3.0], [2.0]).verdict == INCONCLUSIVE
    v = compare([3.0, 3.1, 2.9], [2.0, 2.1, 1.9])
    assert v.baseline == pytest.approx((3.0, 0.1)) and v.technique == pytest.approx((2.0, 0.1))
    se = math.sqrt(0.01 / 3 + 0.01 / 3)
    assert v.extra["se"] == pytest.approx(se) and v.extra["gain"] == pytest.approx(1.0)
    # min_effect: a tiny but consistent gain is not enough
    assert compare([3.0, 3.0, 3.0], [2.99, 2.99, 2.99], min_effect=0.05).verdict == INCONCLUSIVE


def test_trend_verdict():
    assert trend_verdict([1, 2, 4], [[3.0, 3.1], [2.5, 2.6], [2.0, 2.1]], "lower", "loss").verdict == REPRODUCED
    assert trend_verdict([1, 2, 4], [[2.0, 2.1], [2.5, 2.6], [3.0, 3.1]], "lower", "loss").verdict == NOT_REPRODUCED


def test_reproduce_writes_report_and_resumes(tmp_path):
    calls = []

    def run(arm, seed, scale, out):
        calls.append((arm, seed))
        base = 3.0 if arm == "base" else 2.0
        return ArmResult({"val_loss": base + 0.01 * seed}, {"val_loss": [(1, base + 1), (2, base)]})

    name = "_fake_for_test"
    if name not in EXPERIMENTS:
        EXPERIMENTS.register(name, Experiment(name=name, paper="Fake", claim="tech beats base", metric="val_loss",
                                              run=run, arms=["base", "tech"], baseline="base", technique="tech"))
    from lmlab.experiments.runner import reproduce

    out = reproduce([name], "quick", 3, tmp_path, show_progress=False)
    md = (out / "README.md").read_text()
    assert "| `_fake_for_test` |" in md and "**reproduced**" in md
    assert (out / name / "val_loss.png").stat().st_size > 1000
    assert (out / name / "val_loss_by_arm.png").exists()
    rows = json.loads((out / "claims.json").read_text())
    assert rows[0]["baseline"][0] == pytest.approx(3.01) and rows[0]["verdict"] == REPRODUCED
    assert len(calls) == 6
    reproduce([name], "quick", 3, tmp_path, show_progress=False)  # rerun: everything cached
    assert len(calls) == 6


def test_failed_arm_is_reported_not_fatal(tmp_path):
    def run(arm, seed, scale, out):
        if arm == "tech":
            raise RuntimeError("boom")
        return ArmResult({"val_loss": 1.0})

    name = "_failing_for_test"
    if name not in EXPERIMENTS:
        EXPERIMENTS.register(name, Experiment(name=name, paper="Fake", claim="c", metric="val_loss", run=run,
                                              arms=["base", "tech"], baseline="base", technique="tech"))
    from lmlab.experiments.runner import reproduce

    out = reproduce([name], "quick", 2, tmp_path, show_progress=False)
    md = (out / "README.md").read_text()
    assert "## Failures" in md and "boom" in md and "**inconclusive**" in md


def test_headline_set_registered():
    from lmlab.experiments.runner import select

    names = [e.name for e in select()]
    assert "bigger_model" in names and "longer_training" in names
