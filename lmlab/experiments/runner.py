"""`lmlab reproduce`: run experiments (arms × seeds), compute verdicts, write the report.

Every finished (experiment, arm, seed) is saved at once as `<out>/<exp>/<arm>/seed_<k>/arm_result.json`
with its key (see `lmlab.experiments.runkey`): a hash of the arm's resolved config, the hashes of the
sources the run depends on, the environment, and the commit it ran at. A rerun with the same `--out` reuses a
run only when its config, environment and every source it depends on are unchanged; any other run is
deleted and run again, never relabelled. So a crash or Ctrl-C loses at most the run in flight, and after an
edit exactly the runs that depend on the edited code or config run again. Caches an experiment shares between
its runs live in `<out>/<exp>/_*` (e.g. Rho-1's reference model); they are dropped whenever any run of that
experiment is stale, since they were made by the same code.

Which runs to reuse and which to run is decided here, in the driver, before anything runs. The runs to run are
then executed in this process one after the other (default), in `--jobs N` local worker processes, or as Ray
tasks (`--ray`; see `lmlab.experiments.parallel`): each writes its own run folder, and the driver gathers the
results, computes each experiment's verdict once all of its runs are in, and writes the report (README.md with
the forest plot of every claim first, claims.json, report.html). A live table (`lmlab.experiments.progress`)
shows every run while they go, and a summary line with the counts per verdict ends the call.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from lmlab.experiments.base import INCONCLUSIVE, ArmResult, Experiment, Verdict
from lmlab.experiments.runkey import (RunDeps, canonical, code_version, code_version_label, dynamic_closure,
                                      env_key, hash_json, recording)
from lmlab.experiments.parallel import run_tasks
from lmlab.registry import EXPERIMENTS
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


def _plan(exp: Experiment, scale: str, seeds: int, out: Path, deps: RunDeps, env: dict, log=print) -> dict:
    """(arm, seed) -> (want key or the exception computing it, saved result or None, why it is stale or None).
    Drops the experiment's shared caches when any of its runs is stale (they were made by the same code)."""
    plan: dict[tuple[str, int], tuple] = {}
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
    return plan


def _record_failure(d: Path, text: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "error.txt", text)


def run_experiment(exp: Experiment, scale: str, seeds: int, out: Path, progress=None, task=None,
                   log=print, deps: Optional[RunDeps] = None, version: Optional[dict] = None,
                   counts: Optional[dict] = None) -> tuple[dict[str, list[ArmResult]], list[str]]:
    """Runs (or reuses) every (arm, seed) of one experiment in this process, in seed-major order.
    `counts` (if given) gets "reused"/"ran"/"stale" tallies."""
    deps = deps or RunDeps((exp.run.__module__.split(".")[0],) if getattr(exp.run, "__module__", None) else ())
    version = version if version is not None else code_version()
    counts = counts if counts is not None else {}
    for k in ("reused", "ran", "stale"):
        counts.setdefault(k, 0)
    plan = _plan(exp, scale, seeds, out, deps, env_key(), log)
    runs: dict[tuple[str, int], ArmResult] = {}
    failures: list[str] = []
    for seed in range(seeds):
        for arm in exp.arms:
            r, err = _run_planned(exp, arm, seed, scale, out, plan[(arm, seed)], deps, version, counts, log)
            if err:
                failures.append(err)
            if r is not None:
                runs[(arm, seed)] = r
            if progress is not None:
                progress.advance(task)
    return _gather(exp, runs, seeds), failures


def _run_planned(exp: Experiment, arm: str, seed: int, scale: str, out: Path, planned: tuple, deps: RunDeps,
                 version: dict, counts: dict, log=print) -> tuple[Optional[ArmResult], Optional[str]]:
    """The sequential path for one planned run: reuse it, or run it here; (result, failure line)."""
    d = out / exp.name / arm / f"seed_{seed}"
    want, r, why = planned
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
        return r, None
    except Exception as e:  # record the failure, keep going with the other runs
        _record_failure(d, traceback.format_exc())
        log(f"[red]failed[/red] {exp.name}/{arm} seed {seed}: {e}")
        return None, f"{exp.name}/{arm}/seed {seed}: {type(e).__name__}: {e}"


def _gather(exp: Experiment, runs: dict[tuple[str, int], ArmResult], seeds: int) -> dict[str, list[ArmResult]]:
    """{arm: results in seed order} from {(arm, seed): result}, whichever order the runs finished in."""
    return {a: [runs[(a, s)] for s in range(seeds) if (a, s) in runs] for a in exp.arms}


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
              out: Optional[Path] = None, all_: bool = False, show_progress: bool = True, jobs: int = 1,
              ray: bool = False, ray_address: Optional[str] = None) -> Path:
    """Run `names` (default: the headline set; `all_`: every experiment) and write the report into `out`.
    `seeds=None` runs each experiment with `seeds_for(exp, None)` seeds. `jobs` > 1 runs the (experiment, arm,
    seed) runs in that many local worker processes, `ray` as Ray tasks (a local cluster with `jobs` slots, or
    the one at `ray_address`); which runs are reused or rerun is decided here either way."""
    import contextlib

    from rich.console import Console
    from rich.live import Live

    from lmlab.experiments.parallel import LocalPool, RayPool, RunTask
    from lmlab.experiments.progress import Board, summary_line

    console = Console(stderr=True)
    exps = select(names, all_)
    n_seeds = {e.name: seeds_for(e, seeds) for e in exps}
    out = Path(out or Path("reports") / time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    from lmlab.train.metrics import run_metadata

    pool = RayPool(jobs, ray_address) if ray else LocalPool(jobs) if jobs > 1 else None
    version = code_version()
    label = code_version_label(version)
    meta = run_metadata(None, {"experiments": [e.name for e in exps], "scale": scale,
                               "seeds": seeds if seeds is not None else n_seeds,
                               "code_version": label, "tree_hash": version.get("tree"),
                               "executor": pool.describe() if pool else "sequential, in this process"})
    meta.pop("seed", None)
    atomic_write_text(out / "reproduce.json", json.dumps(meta, indent=2))
    roots = tuple(sorted({e.run.__module__.split(".")[0] for e in exps if getattr(e.run, "__module__", None)}))
    deps = RunDeps(roots)
    env = env_key()
    t_start = time.time()
    board = Board(workers=pool.jobs if pool else 1)
    live = Live(board, console=console, refresh_per_second=2) if show_progress else contextlib.nullcontext()
    log = live.console.print if show_progress else console.print
    counts = {e.name: {"reused": 0, "ran": 0, "stale": 0} for e in exps}
    runs: dict[str, dict[tuple[str, int], ArmResult]] = {e.name: {} for e in exps}
    failures: dict[str, list[str]] = {e.name: [] for e in exps}
    spent = {e.name: [0.0, 0.0] for e in exps}          # wall and CPU seconds of the runs run now
    finished: dict[str, dict] = {}
    tasks: list[RunTask] = []
    by_name = {e.name: e for e in exps}

    def finalize(exp: Experiment) -> None:
        t0 = time.time()
        row = _finalize(exp, _gather(exp, runs[exp.name], n_seeds[exp.name]), n_seeds[exp.name], out, scale,
                        label, counts[exp.name], log)
        row["seconds"] = round(spent[exp.name][0] + time.time() - t0, 1)
        row["cpu_seconds"] = round(spent[exp.name][1], 1)
        finished[exp.name] = row
        atomic_write_text(out / exp.name / "verdict.json", json.dumps(row, indent=2, default=float))
        board.decided(exp.name, row["verdict"])
        log(f"[bold]{exp.name}[/bold]: {row['verdict']} — {row['rule']}")

    with live:
        for exp in exps:
            plan = _plan(exp, scale, n_seeds[exp.name], out, deps, env, log)
            for seed in range(n_seeds[exp.name]):
                for arm in exp.arms:
                    want, r, why = plan[(arm, seed)]
                    d = out / exp.name / arm / f"seed_{seed}"
                    if isinstance(want, Exception):
                        failures[exp.name].append(f"{exp.name}/{arm}/seed {seed}: {type(want).__name__}: {want}")
                        _record_failure(d, "".join(traceback.format_exception(want)))
                        board.add(exp.name, arm, seed, "failed")
                        continue
                    prior = r.info.get("seconds") if r is not None else None
                    if why:
                        counts[exp.name]["stale"] += 1
                        log(f"rerun {exp.name}/{arm} seed {seed}: {why}")
                        r = None
                    if r is not None:
                        counts[exp.name]["reused"] += 1
                        runs[exp.name][(arm, seed)] = r
                        board.add(exp.name, arm, seed, "reused", prior)
                        continue
                    board.add(exp.name, arm, seed, "queued", prior)
                    tasks.append(RunTask(exp.name, getattr(exp.run, "__module__", None), arm, seed, scale, str(d),
                                         want, roots, version, [p for p in sys.path if p]))
        if pool is None:
            for exp in exps:
                for t in (t for t in tasks if t.exp == exp.name):
                    board.start(t.exp, t.arm, t.seed)
                    d = Path(t.run_dir)
                    try:
                        r = _run_one(exp, t.arm, t.seed, scale, d, t.want, deps, version)
                    except Exception as e:  # record the failure, keep going with the other runs
                        failures[exp.name].append(f"{t.label}: {type(e).__name__}: {e}")
                        _record_failure(d, traceback.format_exc())
                        log(f"[red]failed[/red] {exp.name}/{t.arm} seed {t.seed}: {e}")
                        board.finish(t.exp, t.arm, t.seed, False)
                        continue
                    runs[exp.name][(t.arm, t.seed)] = r
                    counts[exp.name]["ran"] += 1
                    spent[exp.name][0] += r.info.get("seconds", 0.0)
                    spent[exp.name][1] += r.info.get("cpu_seconds", 0.0)
                    board.finish(t.exp, t.arm, t.seed, True, r.info.get("seconds"))
                finalize(exp)
        else:
            log(f"{len(tasks)} runs to execute on {pool.describe()}")
            left = {e.name: sum(t.exp == e.name for t in tasks) for e in exps}
            for exp in exps:
                if not left[exp.name]:
                    finalize(exp)

            def on_start(t: RunTask) -> None:
                board.start(t.exp, t.arm, t.seed)

            def on_retry(t: RunTask, res: dict) -> None:
                board.retry(t.exp, t.arm, t.seed)
                log(f"[yellow]retry[/yellow] {t.label}: {res.get('error')}")

            def on_done(t: RunTask, res: dict) -> None:
                d = Path(t.run_dir)
                r = None
                if res.get("ok"):
                    path = d / "arm_result.json"
                    if not path.exists():          # the worker ran on another machine: keep its result here
                        d.mkdir(parents=True, exist_ok=True)
                        atomic_write_text(path, res["result"])
                    r, _ = _load(path)
                if r is None:
                    err = res.get("error", "no result")
                    failures[t.exp].append(f"{t.label}: {err} (failed twice: first try and one retry)")
                    _record_failure(d, f"{err}\n{res.get('traceback') or ''}")
                    log(f"[red]failed[/red] {t.label} after a retry: {err}")
                else:
                    runs[t.exp][(t.arm, t.seed)] = r
                    counts[t.exp]["ran"] += 1
                    spent[t.exp][0] += r.info.get("seconds", 0.0)
                    spent[t.exp][1] += r.info.get("cpu_seconds", 0.0)
                board.finish(t.exp, t.arm, t.seed, r is not None, res.get("seconds"))
                left[t.exp] -= 1
                if left[t.exp] == 0:
                    finalize(by_name[t.exp])

            if tasks:
                with pool:
                    run_tasks(tasks, pool, on_start, on_done, on_retry)
    if show_progress and not console.is_terminal:
        console.print()                   # the table's last frame ends without a newline off a terminal
    rows = [finished[e.name] for e in exps]
    all_failures = [f for e in exps for f in failures[e.name]]
    from lmlab.report import write_report

    total = {k: sum(c[k] for c in counts.values()) for k in ("ran", "reused", "stale")}
    line = summary_line([r["verdict"] for r in rows], total, len(all_failures), time.time() - t_start)
    write_report(out, rows, all_failures, meta, scale, seeds, n_seeds, label, line)
    console.print(line)
    console.print(f"report: {out / 'README.md'} and {out / 'report.html'}")
    return out


def _finalize(exp: Experiment, results: dict[str, list[ArmResult]], seeds: int, out: Path, scale: str,
              label: str, counts: dict, log=print) -> dict:
    """The experiment's claims row (verdict, effect with its 95% CI, per-seed numbers) and its figures."""
    from lmlab.forest import effect_of_results
    from lmlab.report import experiment_figures, sample_outputs

    try:
        v = exp.decide(results) if all(results.get(a) for a in (exp.baseline, exp.technique)) else \
            Verdict(INCONCLUSIVE, "missing runs (see failures)")
    except Exception as e:
        v = Verdict(INCONCLUSIVE, f"verdict failed: {type(e).__name__}: {e}")
    run_commits = sorted({_run_commit(out / exp.name / a / f"seed_{k}" / "arm_result.json")
                          for a in exp.arms for k in range(seeds)} - {None})
    per_seed = {a: {str(r.info.get("seed", i)): r.metrics.get(exp.metric) for i, r in enumerate(results[a])}
                for a in exp.arms if results[a]}
    configs = {a: [str(p.relative_to(out)) for k in range(seeds)
                   if (p := out / exp.name / a / f"seed_{k}" / "config.yaml").exists()] for a in exp.arms}
    track = getattr(exp, "track", None) or (getattr(exp.run, "__module__", "") or "").rsplit(".", 1)[-1] or None
    row = {"name": exp.name, "paper": exp.paper, "claim": exp.claim, "track": track,
           "metric": exp.metric, "direction": exp.direction, "baseline_arm": exp.baseline,
           "technique_arm": exp.technique, "baseline": list(v.baseline), "technique": list(v.technique),
           "verdict": v.verdict, "rule": v.rule, "seeds": seeds,
           "n": {a: len(results[a]) for a in exp.arms}, "scale": scale, "commit": label,
           "run_commits": run_commits, "runs": dict(counts), "extra": v.extra,
           "effect": effect_of_results(results, exp.baseline, exp.technique, exp.metric, exp.direction,
                                       exp.paired),
           "description": exp.description, "arms": list(exp.arms), "per_seed": per_seed,
           "configs": {a: c for a, c in configs.items() if c}}
    try:
        row["figures"] = [str(p.relative_to(out)) for p in experiment_figures(exp, results, out / exp.name)]
    except Exception as e:  # a figure must not lose the verdict
        log(f"[red]figures of {exp.name} failed[/red]: {type(e).__name__}: {e}")
        row["figures"] = []
    row["samples"] = sample_outputs(results)
    return row


def _run_commit(path: Path) -> Optional[str]:
    try:
        return json.loads(path.read_text()).get("key", {}).get("commit")
    except (OSError, ValueError):
        return None
