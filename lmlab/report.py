"""Reports: the claims table (markdown) and plots (PNG) of a `lmlab reproduce` run."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

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
