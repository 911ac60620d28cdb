"""WRAP experiment: comparisons with the stand-in arms (trained on WEB / BBE) are scored without those domains."""
from __future__ import annotations

import math

from lmlab.experiments import data_techniques as DT
from lmlab.experiments.base import ArmResult
from lmlab.registry import EXPERIMENTS


def test_standin_domains_leave_out_the_standins_training_domains():
    doms = DT.WRAP["quick"]["domains"]
    assert DT.wrap_standin_domains(doms) == ["bible_kjv", "docs"]
    assert set(DT.WRAP_STYLE_DOMAIN.values()) == {"bible_web", "bible_bbe"}
    m = {"val_loss/bible_kjv": 4.0, "val_loss/bible_web": 1.0, "val_loss/bible_bbe": 1.0, "val_loss/docs": 6.0}
    assert DT.wrap_standin_ppl(m) == math.exp(5.0)


def _arm(losses_by_seed):
    out = []
    for i, (kjv, web, bbe, docs) in enumerate(losses_by_seed):
        m = {"val_loss/bible_kjv": kjv, "val_loss/bible_web": web, "val_loss/bible_bbe": bbe, "val_loss/docs": docs}
        m["val_ppl"] = math.exp(sum(m.values()) / 4)
        m["standin_ppl"] = DT.wrap_standin_ppl(m)
        out.append(ArmResult(m, info={"seed": i}))
    return out


def test_standin_gain_on_its_own_training_domain_does_not_count():
    exp = EXPERIMENTS.get("wrap_rephrase")
    real = _arm([(4.9, 5.4, 5.2, 8.5), (4.95, 5.45, 5.25, 8.6), (4.85, 5.35, 5.15, 8.55)])
    # the stand-in is much better on WEB/BBE (its training data) and slightly worse on KJV + docs
    medium = _arm([(5.0, 4.0, 4.2, 8.6), (5.05, 4.05, 4.25, 8.7), (4.95, 3.95, 4.15, 8.65)])
    v = exp.decide({"real": real, "real_wrap": real, "real_medium": medium, "real_easy": medium})
    assert v.verdict == "inconclusive"                                  # identical arms: no gain
    assert v.extra["standin_real_vs_real_medium_on_kjv_docs"].startswith("not reproduced")
    assert v.extra["real_medium_standin_ppl"][0] > v.extra["real_standin_ppl"][0]
    assert v.extra["real_medium_val_ppl"][0] < v.extra["real_val_ppl"][0]   # what the old metric rewarded
