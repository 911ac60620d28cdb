"""Reports: the claims table (markdown) and plots (PNG) of a `lmlab reproduce` run, and the README
catalogue table generated from a committed claims.json (`lmlab report readme`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np


def fmt(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.4g} ± {std:.2g}" if std == std else f"{mean:.4g}"


def claims_table(rows: list[dict]) -> str:
    head = ("| Experiment | Paper | Claim | Metric | Baseline (mean ± std) | Technique (mean ± std) | Seeds | Verdict |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        lines.append(f"| `{r['name']}` | {r['paper']} | {r['claim']} | {r['metric']} "
                     f"({'↓' if r['direction'] == 'lower' else '↑'}) | {r['baseline_arm']}: {fmt(*r['baseline'])} "
                     f"| {r['technique_arm']}: {fmt(*r['technique'])} | {r['seeds']} | **{r['verdict']}** |")
    return head + "\n".join(lines) + "\n"


def plot_curves(results: dict[str, list[Any]], curve: str, path: Path, title: str) -> bool:
    """Mean curve per arm over seeds, with a min–max band. Returns False when no arm has the curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for arm, runs in results.items():
        series = [r.curves.get(curve) for r in runs if r.curves.get(curve)]
        if not series:
            continue
        xs = [x for x, _ in series[0]]
        n = min(len(s) for s in series)
        ys = np.array([[y for _, y in s[:n]] for s in series], dtype=float)
        ax.plot(xs[:n], ys.mean(0), label=f"{arm} (n={len(series)})")
        if len(series) > 1:
            ax.fill_between(xs[:n], ys.min(0), ys.max(0), alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(curve)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_metric(results: dict[str, list[Any]], metric: str, path: Path, title: str) -> bool:
    """Per-arm metric: one dot per seed and the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a, runs in results.items() if any(metric in r.metrics for r in runs)]
    if not arms:
        return False
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(arms) + 2), 3.6))
    for i, arm in enumerate(arms):
        vals = [r.metrics[metric] for r in results[arm] if metric in r.metrics]
        ax.scatter([i] * len(vals), vals, alpha=0.6)
        ax.hlines(np.mean(vals), i - 0.25, i + 0.25, color="k")
    ax.set_xticks(range(len(arms)), arms, rotation=20, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------------
# The README catalogue, generated from a committed claims.json (`lmlab report readme`)

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "results"            # committed: claims.json + reproduce.json of one full run, catalogue.yaml
BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"
CATALOGUE_HEAD = "| Paper | Component | Test | Experiment | Status (quick scale) |\n|---|---|---|---|---|\n"


def load_catalogue(path: Optional[Path] = None) -> list[dict]:
    import yaml

    return yaml.safe_load(Path(path or RESULTS_DIR / "catalogue.yaml").read_text())["rows"]


def load_claims(path: Optional[Path] = None) -> dict[str, dict]:
    import json

    return {r["name"]: r for r in json.loads(Path(path or RESULTS_DIR / "claims.json").read_text())}


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def claim_status(r: Optional[dict], name: str) -> str:
    """One experiment's status from its claims row: verdict, baseline and technique mean ± std, seeds."""
    if r is None:
        return f"no result for `{name}` in claims.json"
    arrow = "↓" if r.get("direction") == "lower" else "↑"
    b, t = r.get("baseline") or [math.nan, math.nan], r.get("technique") or [math.nan, math.nan]
    if fmt(*b) == "—" and fmt(*t) == "—":
        nums = f"{r['rule']}"
    else:
        nums = f"{r['baseline_arm']} {fmt(*b)} vs {r['technique_arm']} {fmt(*t)} ({r['metric']} {arrow})"
    n = r.get("n") or {}
    seeds = min(n.values()) if n else r.get("seeds")
    return f"**{r['verdict']}**: {nums}, {seeds} seeds"


def catalogue_table(rows: list[dict], claims: dict[str, dict], meta: Optional[dict] = None) -> str:
    """The whole catalogue block between the markers: a provenance line and the table."""
    commits = sorted({c.get("commit") or "?" for c in claims.values()})
    seeds = "/".join(sorted({str(c.get("seeds")) for c in claims.values()}))
    scale = "/".join(sorted({c.get("scale") or "quick" for c in claims.values()}))
    listed = {e for r in rows for e in r.get("experiments", [])}
    which = "--all" if listed <= set(claims) else f"--only … ({len(listed & set(claims))} of {len(listed)} experiments)"
    when = f" on {meta['time'][:10]}" if meta and meta.get("time") else ""
    label = ", ".join(f"`{c[:12]}`" + (" with uncommitted changes" if "uncommitted" in c else "") for c in commits)
    prov = (f"Status below: `lmlab reproduce {which} --scale {scale} --seeds {seeds}` at commit {label}{when} "
            "(`results/claims.json`; table written by `lmlab report readme`).")
    lines = []
    for row in rows:
        exps = row.get("experiments")
        if exps:
            notes = row.get("notes") or {}
            parts = []
            for e in exps:
                s = claim_status(claims.get(e), e)
                if notes.get(e):
                    s += f" — {notes[e]}"
                parts.append((f"`{e}` " if len(exps) > 1 else "") + s)
            exp_cell = ", ".join(f"`{e}`" for e in exps)
            status = "; ".join(parts)
        else:
            exp_cell, status = row.get("experiment", "—"), row.get("status", "")
        lines.append(f"| {row['paper']} | {row['component']} | {row['test']} | {exp_cell} | {_cell(status)} |")
    return f"{BEGIN}\n{prov}\n\n{CATALOGUE_HEAD}" + "\n".join(lines) + f"\n{END}"


def replace_block(text: str, block: str) -> str:
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"README has no {BEGIN} … {END} block")
    return text[:i] + block + text[j + len(END):]


def current_block(text: str) -> str:
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"README has no {BEGIN} … {END} block")
    return text[i:j + len(END)]


def readme_block(claims_path: Optional[Path] = None, catalogue_path: Optional[Path] = None) -> str:
    """The catalogue block for README.md from claims.json (and the reproduce.json beside it) + catalogue.yaml."""
    import json

    claims_path = Path(claims_path or RESULTS_DIR / "claims.json")
    meta_path = claims_path.with_name("reproduce.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    return catalogue_table(load_catalogue(catalogue_path), load_claims(claims_path), meta)
