"""`lmlab reproduce`: run experiments (arms × seeds), compute verdicts, write the report.

Every finished (experiment, arm, seed) is saved at once as `<out>/<exp>/<arm>/seed_<k>/arm_result.json`;
a rerun with the same `--out` skips what is already there, so a crash or Ctrl-C loses at most the run in
flight.
"""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from lmlab.experiments.base import INCONCLUSIVE, ArmResult, Experiment, Verdict
from lmlab.registry import EXPERIMENTS
from lmlab.report import claims_table, plot_curves, plot_metric
from lmlab.io import atomic_write_text


def select(names: Optional[list[str]] = None, all_: bool = False) -> list[Experiment]:
    if names:
        return [EXPERIMENTS.get(n) for n in names]
    exps = [e for _, e in EXPERIMENTS.items()]
    return exps if all_ else [e for e in exps if e.headline]


def _load(path: Path) -> Optional[ArmResult]:
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    return ArmResult(metrics=d["metrics"], curves={k: [tuple(p) for p in v] for k, v in d["curves"].items()},
                     info=d.get("info", {}))


def run_experiment(exp: Experiment, scale: str, seeds: int, out: Path, progress=None, task=None,
                   log=print) -> tuple[dict[str, list[ArmResult]], list[str]]:
    results: dict[str, list[ArmResult]] = {a: [] for a in exp.arms}
    failures = []
    for seed in range(seeds):
        for arm in exp.arms:
            d = out / exp.name / arm / f"seed_{seed}"
            res_file = d / "arm_result.json"
            r = _load(res_file)
            if r is None:
                d.mkdir(parents=True, exist_ok=True)
                t0, c0 = time.time(), time.process_time()
                try:
                    r = exp.run(arm, seed, scale, d)
                except Exception as e:  # record the failure, keep going with the other runs
                    failures.append(f"{exp.name}/{arm}/seed {seed}: {type(e).__name__}: {e}")
                    (d / "error.txt").write_text(traceback.format_exc())
                    log(f"[red]failed[/red] {exp.name}/{arm} seed {seed}: {e}")
                    r = None
                if r is not None:
                    r.info.setdefault("seconds", round(time.time() - t0, 2))
                    r.info.setdefault("cpu_seconds", round(time.process_time() - c0, 2))  # all threads
                    atomic_write_text(res_file, json.dumps(asdict(r), default=float))
            if r is not None:
                results[arm].append(r)
            if progress is not None:
                progress.advance(task)
    return results, failures


def reproduce(names: Optional[list[str]] = None, scale: str = "quick", seeds: int = 3,
              out: Optional[Path] = None, all_: bool = False, show_progress: bool = True) -> Path:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    exps = select(names, all_)
    out = Path(out or Path("reports") / time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    from lmlab.train.metrics import run_metadata

    meta = run_metadata(None, {"experiments": [e.name for e in exps], "scale": scale, "seeds": seeds})
    meta.pop("seed", None)
    atomic_write_text(out / "reproduce.json", json.dumps(meta, indent=2))
    rows, all_failures, sections = [], [], []
    total = sum(len(e.arms) * seeds for e in exps)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not show_progress) as progress:
        task = progress.add_task("reproduce", total=total)
        for exp in exps:
            progress.update(task, description=f"{exp.name}")
            t0, c0 = time.time(), time.process_time()
            results, failures = run_experiment(exp, scale, seeds, out, progress, task, log=progress.console.print)
            all_failures += failures
            try:
                v = exp.decide(results) if all(results.get(a) for a in (exp.baseline, exp.technique)) else \
                    Verdict(INCONCLUSIVE, "missing runs (see failures)")
            except Exception as e:
                v = Verdict(INCONCLUSIVE, f"verdict failed: {type(e).__name__}: {e}")
            row = {"name": exp.name, "paper": exp.paper, "claim": exp.claim, "metric": exp.metric,
                   "direction": exp.direction, "baseline_arm": exp.baseline, "technique_arm": exp.technique,
                   "baseline": list(v.baseline), "technique": list(v.technique), "verdict": v.verdict,
                   "rule": v.rule, "seeds": seeds, "seconds": round(time.time() - t0, 1),
                   "cpu_seconds": round(time.process_time() - c0, 1), "extra": v.extra}
            rows.append(row)
            atomic_write_text(out / exp.name / "verdict.json", json.dumps(row, indent=2, default=float))
            plots = []
            for curve in exp.plots:
                p = out / exp.name / f"{curve.replace('/', '_')}.png"
                if plot_curves(results, curve, p, f"{exp.name}: {curve}"):
                    plots.append(p)
            p = out / exp.name / f"{exp.metric.replace('/', '_')}_by_arm.png"
            if plot_metric(results, exp.metric, p, f"{exp.name}: {exp.metric} per arm and seed"):
                plots.append(p)
            per_arm = "\n".join(
                f"| {a} | " + " | ".join(f"{r.metrics.get(exp.metric, float('nan')):.4g}" for r in results[a]) + " |"
                for a in exp.arms if results[a])
            sec = [f"## `{exp.name}` — {exp.claim}", "", f"*{exp.paper}.* {exp.description}", "",
                   f"**Verdict: {v.verdict}.** Rule: {v.rule}.", "", f"| arm | {exp.metric} per seed |", "|---|---|",
                   per_arm, ""]
            sec += [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
            sections.append("\n".join(sec) + "\n")
            console.print(f"[bold]{exp.name}[/bold]: {v.verdict} — {v.rule}")
    md = [f"# lmlab reproduce — {time.strftime('%Y-%m-%d %H:%M')} (scale {scale}, {seeds} seeds)", "",
          "Verdicts are computed from the measured numbers below; each rule is printed next to its row.", "",
          claims_table(rows), ""]
    if all_failures:
        md += ["## Failures", ""] + [f"- {f}" for f in all_failures] + [""]
    md += sections
    md += ["## Run metadata", "", "```json", json.dumps(meta, indent=2), "```", ""]
    atomic_write_text(out / "README.md", "\n".join(md))
    atomic_write_text(out / "claims.json", json.dumps(rows, indent=2, default=float))
    console.print(f"report: {out / 'README.md'}")
    return out
