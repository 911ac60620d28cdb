"""`lmlab reproduce`: run experiments (arms × seeds), compute verdicts, write the report.

Every finished (experiment, arm, seed) is saved at once as `<out>/<exp>/<arm>/seed_<k>/arm_result.json`
with its key (see `lmlab.experiments.runkey`): a hash of the arm's resolved config, the hashes of the
sources the run depends on, the environment, and the commit it ran at. A rerun with the same `--out` reuses a
run only when its config, environment and every source it depends on are unchanged; any other run is
deleted and run again, never relabelled. So a crash or Ctrl-C loses at most the run in flight, and after an
edit exactly the runs that depend on the edited code or config run again. Caches an experiment shares between
its runs live in `<out>/<exp>/_*` (e.g. Rho-1's reference model); they are dropped whenever any run of that
experiment is stale, since they were made by the same code.
"""
from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from lmlab.experiments.base import INCONCLUSIVE, ArmResult, Experiment, Verdict
from lmlab.experiments.runkey import (RunDeps, canonical, code_version, code_version_label, dynamic_closure,
                                      env_key, hash_json, recording)
from lmlab.registry import EXPERIMENTS
from lmlab.report import claims_table, plot_curves, plot_metric
from lmlab.io import atomic_write_text

DEFAULT_SEEDS = 3


def select(names: Optional[list[str]] = None, all_: bool = False) -> list[Experiment]:
    if names:
        return [EXPERIMENTS.get(n) for n in names]
    exps = [e for _, e in EXPERIMENTS.items()]
    return exps if all_ else [e for e in exps if e.headline]


def seeds_for(exp: Experiment, seeds: Optional[int]) -> int:
    """`--seeds` when given, else max(3, the experiment's declared seed count)."""
    if seeds is not None:
        return seeds
    return max(DEFAULT_SEEDS, int(getattr(exp, "seeds", None) or 0))


def arm_config(exp: Experiment, arm: str, scale: str, seed: int) -> dict:
    """What the run's config part of the key hashes: the resolved config when the experiment can tell it,
    else the run's identity (the code part then carries everything the run function decides)."""
    fn = getattr(exp, "arm_config", None)
    if callable(fn):
        try:
            cfg = fn(arm, scale, seed)
        except NotImplementedError:
            cfg = None
        if cfg is not None:
            return {"arm_config": canonical(cfg), "scale": scale, "seed": seed}
    run = exp.run
    return {"experiment": exp.name, "arm": arm, "scale": scale, "seed": seed,
            "run": f"{getattr(run, '__module__', '?')}.{getattr(run, '__qualname__', repr(run))}"}


def run_key(exp: Experiment, arm: str, scale: str, seed: int, deps: RunDeps, env: dict) -> dict:
    """The key known before the run: config, environment, static sources (the run adds what it looked up)."""
    cfg = arm_config(exp, arm, scale, seed)
    return {"config_hash": hash_json(cfg), "config": cfg, "env": env, "code": deps.for_callable(exp.run)}


def why_stale(key: Optional[dict], want: dict, deps: RunDeps) -> Optional[str]:
    """None when a run saved with `key` is still valid for `want`, else the reason it is not."""
    if not key:
        return "no run key (saved before runs were keyed)"
    if key.get("config_hash") != want["config_hash"]:
        return "config changed"
    if key.get("env") != want["env"]:
        diff = [f"{k} {key.get('env', {}).get(k)} -> {v}" for k, v in want["env"].items()
                if key.get("env", {}).get(k) != v]
        return "environment changed: " + ", ".join(diff)
    code = key.get("code") or {}
    missing = sorted(set(want["code"]) - set(code))
    if missing:
        return "new sources: " + ", ".join(missing[:4])
    changed = deps.stale(code)
    if changed:
        return "code changed: " + ", ".join(changed[:4]) + (f" (+{len(changed) - 4})" if len(changed) > 4 else "")
    return None


def _load(path: Path) -> tuple[Optional[ArmResult], Optional[dict]]:
    if not path.exists():
        return None, None
    d = json.loads(path.read_text())
    return (ArmResult(metrics=d["metrics"], curves={k: [tuple(p) for p in v] for k, v in d["curves"].items()},
                      info=d.get("info", {})), d.get("key"))


def run_experiment(exp: Experiment, scale: str, seeds: int, out: Path, progress=None, task=None,
                   log=print, deps: Optional[RunDeps] = None, version: Optional[dict] = None,
                   counts: Optional[dict] = None) -> tuple[dict[str, list[ArmResult]], list[str]]:
    """Runs (or reuses) every (arm, seed). `counts` (if given) gets "reused"/"ran"/"stale" tallies."""
    deps = deps or RunDeps((exp.run.__module__.split(".")[0],) if getattr(exp.run, "__module__", None) else ())
    version = version if version is not None else code_version()
    env = env_key()
    counts = counts if counts is not None else {}
    for k in ("reused", "ran", "stale"):
        counts.setdefault(k, 0)
    results: dict[str, list[ArmResult]] = {a: [] for a in exp.arms}
    failures = []
    plan: dict[tuple[str, int], tuple] = {}       # (arm, seed) -> (want, saved result or None, why stale)
    for seed in range(seeds):
        for arm in exp.arms:
            try:
                want = run_key(exp, arm, scale, seed, deps, env)
                r, key = _load(out / exp.name / arm / f"seed_{seed}" / "arm_result.json")
                plan[(arm, seed)] = (want, r, why_stale(key, want, deps) if r is not None else None)
            except Exception as e:
                plan[(arm, seed)] = (e, None, None)
    if any(why for _, _, why in plan.values()):
        # Caches an experiment shares between its runs (`<out>/<exp>/_*`, e.g. Rho-1's reference model) were
        # made by code or configs that are now stale for at least one run: drop them, the rerun remakes them.
        for shared in sorted((out / exp.name).glob("_*")):
            log(f"drop shared cache {shared.relative_to(out)} (runs of {exp.name} are stale)")
            shutil.rmtree(shared) if shared.is_dir() else shared.unlink()
    for seed in range(seeds):
        for arm in exp.arms:
            d = out / exp.name / arm / f"seed_{seed}"
            want, r, why = plan[(arm, seed)]
            try:
                if isinstance(want, Exception):
                    raise want
                if why:
                    counts["stale"] += 1
                    log(f"rerun {exp.name}/{arm} seed {seed}: {why}")
                    r = None
                if r is not None:
                    counts["reused"] += 1
                else:
                    r = _run_one(exp, arm, seed, scale, d, want, deps, version)
                    counts["ran"] += 1
            except Exception as e:  # record the failure, keep going with the other runs
                failures.append(f"{exp.name}/{arm}/seed {seed}: {type(e).__name__}: {e}")
                d.mkdir(parents=True, exist_ok=True)
                (d / "error.txt").write_text(traceback.format_exc())
                log(f"[red]failed[/red] {exp.name}/{arm} seed {seed}: {e}")
                r = None
            if r is not None:
                results[arm].append(r)
            if progress is not None:
                progress.advance(task)
    return results, failures


def _run_one(exp: Experiment, arm: str, seed: int, scale: str, d: Path, want: dict, deps: RunDeps,
             version: dict) -> ArmResult:
    """Run one arm in a clean directory. A directory left by an interrupted run of the same key is kept (the
    trainer resumes from its checkpoints); anything else there (a stale run) is deleted first."""
    started = d / "run_key.json"
    if d.exists():
        same = False
        if started.exists() and not (d / "arm_result.json").exists():
            try:
                same = why_stale(json.loads(started.read_text()), want, deps) is None
            except (ValueError, OSError):
                same = False
        if not same:
            shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(started, json.dumps(want, indent=1, default=str))
    t0, c0 = time.time(), time.process_time()
    with recording() as seen:
        r = exp.run(arm, seed, scale, d)
    r.info.setdefault("seconds", round(time.time() - t0, 2))
    r.info.setdefault("cpu_seconds", round(time.process_time() - c0, 2))  # all threads
    key = dict(want, code={**want["code"], **dynamic_closure(deps, seen)}, commit=code_version_label(version))
    atomic_write_text(d / "arm_result.json", json.dumps({**asdict(r), "key": key}, default=float))
    return r


def reproduce(names: Optional[list[str]] = None, scale: str = "quick", seeds: Optional[int] = None,
              out: Optional[Path] = None, all_: bool = False, show_progress: bool = True) -> Path:
    """Run `names` (default: the headline set; `all_`: every experiment) and write the report into `out`.
    `seeds=None` runs each experiment with `seeds_for(exp, None)` seeds."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    exps = select(names, all_)
    n_seeds = {e.name: seeds_for(e, seeds) for e in exps}
    out = Path(out or Path("reports") / time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    from lmlab.train.metrics import run_metadata

    version = code_version()
    label = code_version_label(version)
    meta = run_metadata(None, {"experiments": [e.name for e in exps], "scale": scale,
                                      "seeds": seeds if seeds is not None else n_seeds,
                                      "code_version": label, "tree_hash": version.get("tree")})
    meta.pop("seed", None)
    atomic_write_text(out / "reproduce.json", json.dumps(meta, indent=2))
    roots = tuple(sorted({e.run.__module__.split(".")[0] for e in exps if getattr(e.run, "__module__", None)}))
    deps = RunDeps(roots)
    rows, all_failures, sections = [], [], []
    total = sum(len(e.arms) * n_seeds[e.name] for e in exps)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not show_progress) as progress:
        task = progress.add_task("reproduce", total=total)
        for exp in exps:
            progress.update(task, description=f"{exp.name}")
            t0, c0 = time.time(), time.process_time()
            counts: dict = {}
            results, failures = run_experiment(exp, scale, n_seeds[exp.name], out, progress, task,
                                               log=progress.console.print, deps=deps, version=version,
                                               counts=counts)
            all_failures += failures
            try:
                v = exp.decide(results) if all(results.get(a) for a in (exp.baseline, exp.technique)) else \
                    Verdict(INCONCLUSIVE, "missing runs (see failures)")
            except Exception as e:
                v = Verdict(INCONCLUSIVE, f"verdict failed: {type(e).__name__}: {e}")
            run_commits = sorted({_run_commit(out / exp.name / a / f"seed_{k}" / "arm_result.json")
                                  for a in exp.arms for k in range(n_seeds[exp.name])} - {None})
            row = {"name": exp.name, "paper": exp.paper, "claim": exp.claim, "track": getattr(exp, "track", None),
                   "metric": exp.metric, "direction": exp.direction, "baseline_arm": exp.baseline,
                   "technique_arm": exp.technique, "baseline": list(v.baseline), "technique": list(v.technique),
                   "verdict": v.verdict, "rule": v.rule, "seeds": n_seeds[exp.name],
                   "n": {a: len(results[a]) for a in exp.arms}, "scale": scale, "commit": label,
                   "run_commits": run_commits, "runs": counts, "seconds": round(time.time() - t0, 1),
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
            summary = getattr(exp, "summary_plots", None)   # cross-arm figures an experiment draws itself
            if summary is not None and any(results.get(a) for a in exp.arms):
                try:
                    plots += [p for p in summary(results, out / exp.name) if Path(p).exists()]
                except Exception as e:  # a figure must not cost the verdict
                    console.print(f"{exp.name}: summary plot failed: {type(e).__name__}: {e}")
            for a in exp.arms:          # images a run saved (info["images"]: files in its dir), first seed
                for r in results[a][:1]:
                    d = out / exp.name / a / f"seed_{r.info.get('seed', 0)}"
                    plots += [d / f for f in r.info.get("images", []) if (d / f).exists()]
            per_arm = "\n".join(
                f"| {a} | " + " | ".join(f"{r.metrics.get(exp.metric, float('nan')):.4g}" for r in results[a]) + " |"
                for a in exp.arms if results[a])
            sec = [f"## `{exp.name}` — {exp.claim}", "", f"*{exp.paper}.* {exp.description}", "",
                   f"**Verdict: {v.verdict}.** Rule: {v.rule}.", "",
                   f"Runs: {counts['ran']} run now, {counts['reused']} reused unchanged "
                   f"({counts['stale']} stale ones rerun); commits of the runs: {', '.join(c[:12] for c in run_commits)}.",
                   "", f"| arm | {exp.metric} per seed |", "|---|---|", per_arm, ""]
            sec += [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
            sections.append("\n".join(sec) + "\n")
            console.print(f"[bold]{exp.name}[/bold]: {v.verdict} — {v.rule}")
    seeds_txt = f"{seeds} seeds" if seeds is not None else "seeds: " + ", ".join(sorted({str(n) for n in n_seeds.values()}))
    md = [f"# lmlab reproduce — {time.strftime('%Y-%m-%d %H:%M')} (scale {scale}, {seeds_txt}, code {label[:12]})", "",
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


def _run_commit(path: Path) -> Optional[str]:
    try:
        return json.loads(path.read_text()).get("key", {}).get("commit")
    except (OSError, ValueError):
        return None
