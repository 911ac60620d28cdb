"""Debate with verified quotes (Khan et al. 2024, "Debating with More Persuasive LLMs Leads to More Truthful
Answers"): does a judge without the passage answer more accurately after a debate than after one advocate
(consultancy) or with no help, and more accurately still when debaters are best-of-N selected for persuasiveness?

Setting: hidden-information reading tasks from the embedded Bible (BBE) corpus (lmlab.data.reading_tasks: a
passage only the debaters see, a fill-the-blank question, the correct word and a distractor that follows the
same word elsewhere in the corpus and is absent from the passage). SmolLM2-135M-Instruct is every debater and
the judge (the paper's debaters are GPT-4-class and its judges GPT-3.5/GPT-4/humans; at 135M the judge is the
weak point, and a judge near chance is reported as such). Per seed: `n_tasks` tasks; debaters sample N
candidate arguments per side once (assistant prefix 'I argue for "X". <quote>', ≤ `max_new` tokens, one round),
shared by the arms:
  no_info      judge sees question + answers only
  consultancy  one consultant (first candidate), for the correct answer and for the wrong one (half each)
  debate       both debaters (first candidate each)
  debate_bo{N} both debaters best-of-N by the judge-preference model (the judge's probability for the debater's
               answer with the candidate opposite the dummy argument)
Every transcript is judged in both answer orders (position swap); accuracy = mean over orders of
1[P(correct) > 0.5] (lmlab.eval.debate.judge_transcripts).
Verdict (fixed before the runs): three paired one-sided t-tests over seeds at α = 0.05 (the arms of a seed share
its tasks and samples) — consultancy > no_info, debate > consultancy, debate_bo{N} > debate; the row is
reproduced only if all three are (`combine(how="all")`), each part's verdict is printed in the rule.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from lmlab.experiments.base import ArmResult, Experiment, arm_values, combine, compare, mean_std
from lmlab.registry import EXPERIMENTS
from lmlab.experiments.runkey import cached

SCALES = {
    "quick": dict(n_tasks=6, best_of=2, max_new=16),
    "full": dict(n_tasks=100, best_of=8, max_new=48),
}
BO = SCALES["quick"]["best_of"]
ARMS = ["no_info", "consultancy", "debate", f"debate_bo{BO}"]


@cached(maxsize=1)
def _backend(spec: str):
    from lmlab.backend import load_backend

    return load_backend(spec)


def _spec() -> str:
    return os.environ.get("LMLAB_DEBATE_BACKEND", "smollm2")


@cached(maxsize=2)
def _shared(seed: int, scale: str):
    """Tasks and the N candidate arguments per (task, side) of one seed (sampled once, shared by the arms)."""
    from lmlab.data.reading_tasks import bible_reading_tasks
    from lmlab.eval.debate import Transcript, argue

    s = SCALES[scale]
    tasks = bible_reading_tasks(s["n_tasks"], seed=seed)
    items = [(Transcript(t.question, t.correct, t.wrong, [], "debate"), t.passage, side)
             for t in tasks for side in ("correct", "wrong")]
    c0 = time.process_time()
    cands = argue(_backend(_spec()), items, n=s["best_of"], max_new_tokens=s["max_new"], seed=seed)
    table = {(k // 2, side): c for k, ((_, _, side), c) in enumerate(zip(items, cands))}
    return tasks, table, time.process_time() - c0


def _run(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.eval.debate import judge_transcripts, quote_stats, run_debates

    s = SCALES[scale]
    be = _backend(_spec())
    c0, t0 = time.process_time(), time.time()
    tasks, table, sample_cpu = _shared(seed, scale)
    method = "debate" if arm.startswith("debate") else arm
    best_of = s["best_of"] if arm.startswith("debate_bo") else 1
    trs = run_debates(be, be, tasks, method=method, rounds=1, best_of=best_of, candidates=table, seed=seed)
    passages = [t.passage for t in tasks for _ in range(2 if method == "consultancy" else 1)]
    res = judge_transcripts(be, trs, passages)
    p_a = [r["p_correct"][0] for r in res] + [1 - r["p_correct"][1] for r in res]     # P(judge says A)
    metrics = {"accuracy": sum(r["accuracy"] for r in res) / len(res),
               "p_correct": sum(r["p_mean"] for r in res) / len(res),
               "position_bias_pA": sum(p_a) / len(p_a),
               "cpu_s": time.process_time() - c0, "wall_s": time.time() - t0, "shared_sample_cpu_s": sample_cpu}
    if method != "no_info":
        metrics.update(quote_stats(trs, passages))
    examples = [{"question": t.question, "correct": t.correct, "wrong": t.wrong, "rounds": tr.rounds,
                 "p_correct": r["p_correct"]} for t, tr, r in zip(tasks, trs, res)][:4]
    return ArmResult(metrics, info={"seed": seed, "examples": examples,
                                    "backend": getattr(be, "name", "?")})


def _verdict(exp: Experiment, results):
    parts = {}
    for b, t in (("no_info", "consultancy"), ("consultancy", "debate"), ("debate", f"debate_bo{BO}")):
        vb, vt = arm_values(results, b, t, "accuracy", paired=True)
        parts[f"{t} > {b}"] = compare(vb, vt, "higher", paired=True)
    vb, vt = arm_values(results, "no_info", "debate", "accuracy", paired=True)
    return combine(parts, "all", "judge accuracy no_info < consultancy < debate < best-of-N debate",
                   baseline=mean_std(vb), technique=mean_std(vt))


_Q = SCALES["quick"]
EXPERIMENTS.register("debate_quotes", Experiment(
    name="debate_quotes", paper="Debating with More Persuasive LLMs Leads to More Truthful Answers (Khan et al. 2024)",
    claim="a judge without the passage is more accurate with consultancy than alone, with debate than with "
          "consultancy, and with best-of-N debaters than best-of-1",
    metric="accuracy", direction="higher", arms=ARMS, baseline="no_info", technique="debate", run=_run,
    verdict=_verdict, paired=True, plots=[],
    description=(f"SmolLM2-135M-Instruct as debaters and judge (LMLAB_DEBATE_BACKEND picks another backend). "
                 f"{_Q['n_tasks']} hidden-passage fill-the-blank tasks per seed from the BBE Bible (distractor: a "
                 f"word that follows the same word elsewhere and is absent from the passage); one round, arguments "
                 f"≤ {_Q['max_new']} tokens opened as 'I argue for \"X\". <quote>'; quotes verified by normalised "
                 f"whole-word substring match and shown as <v_quote>/<u_quote>; logprob judge over the letters A/B, "
                 f"both answer orders; best-of-{_Q['best_of']} by the judge-preference model against the dummy "
                 f"argument. Verdict: all of consultancy > no_info, debate > consultancy, best-of-{_Q['best_of']} > "
                 f"debate (paired one-sided t over seeds).")))
