"""CrossEval on a model ("Law of the Weakest Link", Zhong et al. 2024): SmolLM2-135M-Instruct answers our small
set of single- and cross-capability prompts (lmlab.eval.crosseval_run.PROMPTS: english, reasoning, coding and
their three pairs, each prompt with a rated reference response and a programmatic gold), judged through
lmlab.eval.judge by a configurable backend (SmolLM2 by default; LMLAB_CROSSEVAL_JUDGE and
LMLAB_CROSSEVAL_MODEL take any backend spec).

Per seed: one sampled response per prompt (temperature 0.7, the seed varies the samples and the judge's
re-asks). Scores 1–5 rescaled to 1–100; individual vs cross means; `wl_gap` = mean over pairs of
|cross − weaker| − |cross − stronger| (< 0: cross scores sit nearer the weaker capability); the same statistic
from the programmatic gold (`wl_gap_gold`); the judge's agreement with the gold (`judge_gold_agreement`, AUC).
Quick-scale judge: the 135M judge is asked only for the final `Score: X/5` line (the paper's required
sections are off: `judge_sections=()`), greedy then re-asked once when malformed; the parse rate is reported.

Verdict (fixed before the runs): both must hold over seeds (one-sample one-sided t-tests at α = 0.05) —
wl_gap < 0 (the weakest link), and judge_gold_agreement > 0.5 (the judge tells gold-correct from gold-wrong
responses better than chance; without it the weakest-link number says nothing about the model).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from lmlab.experiments.base import ArmResult, Experiment, combine, exceeds, mean_std
from lmlab.registry import EXPERIMENTS
from lmlab.experiments.runkey import cached

SCALES = {
    "quick": dict(max_new=48, judge_max_new=32, judge_retries=1, sections=()),
    "full": dict(max_new=256, judge_max_new=768, judge_retries=3, sections=None),   # None: the paper's sections
}


@cached(maxsize=2)
def _backend(spec: str):
    from lmlab.backend import load_backend

    return load_backend(spec)


def _run(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.eval.crosseval_run import run_crosseval
    from lmlab.eval.judge import REQUIRED_SECTIONS

    s = SCALES[scale]
    model = _backend(os.environ.get("LMLAB_CROSSEVAL_MODEL", "smollm2"))
    judge = _backend(os.environ.get("LMLAB_CROSSEVAL_JUDGE", "smollm2"))
    c0, t0 = time.process_time(), time.time()
    res = run_crosseval(model, judge, max_new_tokens=s["max_new"], seed=seed, judge_retries=s["judge_retries"],
                        judge_sections=REQUIRED_SECTIONS if s["sections"] is None else s["sections"],
                        judge_max_new_tokens=s["judge_max_new"])
    sm = res.summary
    nan = math.nan
    metrics = {"wl_gap": sm["wl_gap"], "wl_gap_gold": sm["wl_gap_gold"],
               "judge_gold_agreement": sm["judge_gold_agreement"], "parse_rate": sm["parse_rate"],
               "gold_pass_rate": sm["gold_pass_rate"], "mean_individual": sm["mean_individual"],
               "mean_cross": sm["mean_cross"],
               **{f"ind_{k}": v for k, v in sm["individual"].items()},
               **{f"cross_{k}": v for k, v in sm["cross"].items()},
               **{f"gold_ind_{k}": v for k, v in sm["gold_individual"].items()},
               "below_weak": sm["weakest_link"].get("below_weak", nan),
               "cpu_s": time.process_time() - c0, "wall_s": time.time() - t0}
    curves = {"individual_then_cross": [(0, sm["mean_individual"]), (1, sm["mean_cross"])],
              "gold_individual_then_cross": [(0, sum(sm["gold_individual"].values()) / max(1, len(sm["gold_individual"]))),
                                             (1, sum(sm["gold_cross"].values()) / max(1, len(sm["gold_cross"])))]}
    return ArmResult(metrics, curves, info={"seed": seed, "records": res.records, "summary": sm})


def _verdict(exp: Experiment, results):
    rs = results.get("smollm2", [])
    gap = [r.metrics["wl_gap"] for r in rs if math.isfinite(r.metrics["wl_gap"])]
    agree = [r.metrics["judge_gold_agreement"] for r in rs if math.isfinite(r.metrics["judge_gold_agreement"])]
    parts = {"weakest link (wl_gap < 0)": exceeds(gap, 0.0, "lower", what="wl_gap"),
             "judge agrees with gold (AUC > 0.5)": exceeds(agree, 0.5, "higher", what="judge_gold_agreement")}
    return combine(parts, "all", "weakest link measured by a judge better than chance",
                   baseline=mean_std([r.metrics["mean_individual"] for r in rs]),
                   technique=mean_std([r.metrics["mean_cross"] for r in rs]))


EXPERIMENTS.register("crosseval_smollm2", Experiment(
    name="crosseval_smollm2", paper="Law of the Weakest Link: Cross Capabilities of LLMs (Zhong et al. 2024)",
    claim="cross-capability scores sit nearer the weaker individual score (judge checked against a gold)",
    metric="wl_gap", direction="lower", arms=["smollm2"], baseline="smollm2", technique="smollm2", run=_run,
    verdict=_verdict, plots=["individual_then_cross", "gold_individual_then_cross"],
    description=("SmolLM2-135M-Instruct answers 18 prompts of our own (english, reasoning, coding and their 3 pairs, "
                 "3 each), each with a reference rated 5/5 and a programmatic gold; judged by SmolLM2 through "
                 "lmlab.eval.judge (Score: X/5 only at quick scale, one re-ask), rescaled 1–100. Baseline column: "
                 "mean individual score; technique column: mean cross score. Verdict: wl_gap < 0 and judge-gold "
                 "AUC > 0.5, one-sample one-sided t over seeds, both must hold.")))
