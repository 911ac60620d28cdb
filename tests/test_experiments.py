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
    # min_effect: a tiny but consistent gain is not enough — it is shown to be below min_effect (the mirror
    # one-sided test at the margin; the old 2·SE rule called it inconclusive)
    assert compare([3.0, 3.0, 3.0], [2.99, 2.99, 2.99], min_effect=0.05).verdict == NOT_REPRODUCED


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


# ------------------------------------------------------------------------------- verdict statistics
def _old_two_se_rule(b, t):
    """The rule compare() used before: reproduced if (mean b − mean t) > 2·sqrt(s_b²/n + s_t²/n)."""
    import numpy as np

    b, t = np.asarray(b), np.asarray(t)
    return b.mean() - t.mean() > 2 * math.sqrt(b.var(ddof=1) / len(b) + t.var(ddof=1) / len(t))


def test_welch_t_rejects_what_the_two_se_rule_calls_a_gain():
    # 3 seeds, one noisy arm: gain = 2.5·SE, but the Welch df ≈ 2 puts the 95% t quantile near 2.9
    b, t = [1.0, 2.0, 3.0], [0.5, 0.6, 0.7]
    se = math.sqrt(1.0 / 3 + 0.01 / 3)
    t = [x - (2.5 * se - (2.0 - 0.6)) for x in t]
    assert _old_two_se_rule(b, t)
    v = compare(b, t)
    assert v.verdict == INCONCLUSIVE
    assert v.extra["df"] < 2.2 and "Welch t" in v.rule and "df = " in v.rule and "p = " in v.rule
    assert 0.05 < v.extra["p"] < 0.1
    assert compare(b, [x - 1.0 for x in t]).verdict == REPRODUCED            # a larger gain passes


def test_false_positive_rate_under_the_null_is_alpha():
    """Noisy synthetic arms with no true difference, 3 seeds each, one arm 5× noisier than the other: the old
    2·SE rule claims a gain in ~8% of draws, the one-sided Welch test at α = 0.05 in ~5%."""
    import numpy as np

    rng = np.random.default_rng(0)
    n, old, new = 4000, 0, 0
    for _ in range(n):
        b, t = rng.normal(0, 1, 3), rng.normal(0, 0.2, 3)
        old += _old_two_se_rule(b, t)
        new += compare(list(b), list(t)).verdict == REPRODUCED
    assert old / n > 0.07
    assert 0.035 < new / n < 0.062


def test_paired_t_uses_the_seed_pairing():
    seed_effect = [1.0, 2.0, 3.0, 4.0, 5.0]                       # each seed shifts both arms alike
    b = [x + e for x, e in zip(seed_effect, [0.01, -0.01, 0.0, 0.01, -0.01])]
    t = [x - 0.1 for x in seed_effect]
    assert compare(b, t).verdict == INCONCLUSIVE                   # unpaired: the seed spread swamps 0.1
    v = compare(b, t, paired=True)
    assert v.verdict == REPRODUCED and "paired t" in v.rule and v.extra["df"] == 4
    # Experiment(paired=True) pairs runs by their recorded seed, whatever the list order
    mk = lambda xs, order: [ArmResult({"val_loss": xs[i]}, info={"seed": i}) for i in order]  # noqa: E731
    exp = Experiment(name="_paired", paper="-", claim="-", metric="val_loss", run=lambda *a: None,
                     arms=["base", "tech"], baseline="base", technique="tech", paired=True)
    assert exp.decide({"base": mk(b, [0, 1, 2, 3, 4]), "tech": mk(t, [3, 1, 4, 0, 2])}).verdict == REPRODUCED
    assert exp.decide({"base": mk(b, [0]), "tech": mk(t, [0])}).verdict == INCONCLUSIVE


def test_tost_equivalence():
    from lmlab.experiments.base import equivalent

    ref = [4.0, 4.01, 3.99]
    v = equivalent(ref, [4.03, 4.02, 4.04], tol=0.05)               # 90% CI ≈ [0.013, 0.047] ⊂ ±0.05
    assert v.verdict == REPRODUCED and "TOST" in v.rule
    lo, hi = v.extra["ci"]
    assert -0.05 < lo < hi < 0.05
    assert equivalent(ref, [4.5, 4.52, 4.49], tol=0.05).verdict == NOT_REPRODUCED
    assert equivalent(ref, [3.5, 3.52, 3.49], tol=0.05).verdict == NOT_REPRODUCED   # "matches" fails both ways
    # a mean difference inside ±tol that the noise does not pin down: the old Griffin rule (diff ≤ tol)
    # called this a match
    noisy = [4.3, 3.75, 4.01]
    assert abs(sum(noisy) / 3 - 4.0) < 0.05
    assert equivalent(ref, noisy, tol=0.05).verdict == INCONCLUSIVE


def test_noninferiority_and_one_sample():
    from lmlab.experiments.base import exceeds, noninferior

    ref = [0.60, 0.62, 0.58]
    assert noninferior(ref, [0.60, 0.61, 0.59], 0.05, "higher", paired=True).verdict == REPRODUCED
    assert noninferior(ref, [0.50, 0.51, 0.49], 0.05, "higher", paired=True).verdict == NOT_REPRODUCED
    assert noninferior(ref, [0.45, 0.65, 0.55], 0.05, "higher", paired=True).verdict == INCONCLUSIVE
    # better by far still "matches or beats"
    assert noninferior(ref, [0.9, 0.91, 0.92], 0.05, "higher").verdict == REPRODUCED
    assert exceeds([0.51, 0.5, 0.49], 0.3, "higher").verdict == REPRODUCED
    assert exceeds([0.51, 0.5, 0.49], 0.3, "lower").verdict == NOT_REPRODUCED
    assert exceeds([0.1, 0.9, 0.5], 0.45, "higher").verdict == INCONCLUSIVE


def test_trend_uses_the_t_quantile():
    # 3 points: slope/SE = 3 passed the old "> 2 SE" rule; with 1 degree of freedom the 95% quantile is 6.31
    v = trend_verdict([0, 1, 2], [[0.0], [1.3], [1.85]], "higher", "y")
    assert 2.0 < v.extra["slope"] / v.extra["se"] < 6.3
    assert v.verdict == INCONCLUSIVE and "df = 1" in v.rule
    assert trend_verdict([0, 1, 2], [[0.0], [1.0], [2.01]], "higher", "y").verdict == REPRODUCED


def test_combine():
    from lmlab.experiments.base import Verdict, combine

    R, N, I = (Verdict(REPRODUCED, "r"), Verdict(NOT_REPRODUCED, "n"), Verdict(INCONCLUSIVE, "i"))
    assert combine([R, R]).verdict == REPRODUCED
    assert combine([R, I]).verdict == INCONCLUSIVE
    assert combine([R, N, I]).verdict == NOT_REPRODUCED
    assert combine([R, I], "any").verdict == REPRODUCED
    assert combine([N, I], "any").verdict == INCONCLUSIVE
    assert combine([N, N], "any").verdict == NOT_REPRODUCED
    v = combine({"first": R, "second": I}, "all", "claim")
    assert v.rule.startswith("claim: first: (r); second: (i)") and v.extra["second"]["verdict"] == INCONCLUSIVE
    with pytest.raises(ValueError, match="how"):
        combine([R], "most")


def test_every_headline_row_declares_five_seeds():
    from lmlab.experiments.base import HEADLINE_SEEDS

    heads = [e for _, e in EXPERIMENTS.items() if e.headline]
    assert heads and all(e.seeds >= HEADLINE_SEEDS for e in heads)
    with pytest.raises(ValueError, match="headline"):
        Experiment(name="_h", paper="-", claim="-", metric="m", run=lambda *a: None, arms=["a", "b"],
                   baseline="a", technique="b", headline=True)
    with pytest.raises(ValueError, match="baseline"):
        Experiment(name="_x", paper="-", claim="-", metric="m", run=lambda *a: None, arms=["a", "b"],
                   baseline="c", technique="b")
