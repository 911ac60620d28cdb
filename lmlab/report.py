"""Reports: the claims table (markdown) and plots (PNG) of a `lmlab reproduce` run, and the README
catalogue table generated from a committed claims.json (`lmlab report readme`).

Curves are drawn as the mean over seeds with a ± 1 std band per arm, each arm in the same colour in every
figure of its experiment; axis labels, units and scales come from `lmlab.experiments.axes`. The forest plot
of every claim and `report diff` are in `lmlab.forest`, the self-contained report.html in `lmlab.report_html`."""
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


ARM_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
               "#7f7f7f", "#bcbd22"]


def arm_colours(arms: list[str]) -> dict[str, str]:
    """One colour per arm, by the arm's position in the experiment: the same in every figure of it."""
    return {a: ARM_COLOURS[i % len(ARM_COLOURS)] for i, a in enumerate(arms)}


def curve_band(series: list[list[tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, std, n) over seeds, per x value (points of a seed grouped by their x; std with ddof 1, 0 when
    one seed has that x). x values in increasing order."""
    by_x: dict[float, list[float]] = {}
    for s in series:
        for x, y in s:
            if y is not None and math.isfinite(float(y)):
                by_x.setdefault(float(x), []).append(float(y))
    xs = np.array(sorted(by_x), dtype=float)
    ys = [np.asarray(by_x[x]) for x in xs]
    mean = np.array([v.mean() for v in ys])
    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in ys])
    n = np.array([len(v) for v in ys])
    return xs, mean, std, n


def plot_curves(results: dict[str, list[Any]], curve: str, path: Path, title: str, experiment: str = "",
                colours: Optional[dict[str, str]] = None) -> bool:
    """Mean curve per arm over seeds with a ± 1 std band; axes from `lmlab.experiments.axes.axis_for`
    (label, unit, log x for a geometric sweep). Returns False when no arm has the curve."""
    fig = curve_figure(results, curve, title, experiment, colours)
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return True


def curve_figure(results: dict[str, list[Any]], curve: str, title: str, experiment: str = "",
                 colours: Optional[dict[str, str]] = None):
    """The matplotlib Figure of `plot_curves` (None when no arm has the curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmlab.experiments.axes import axis_for

    colours = colours or arm_colours(list(results))
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn, all_x = False, []
    for arm, runs in results.items():
        series = [r.curves.get(curve) for r in runs if r.curves.get(curve)]
        if not series:
            continue
        xs, mean, std, n = curve_band(series)
        if not len(xs):
            continue
        c = colours.get(arm)
        ax.plot(xs, mean, color=c, label=f"{arm} (mean of {len(series)} seed{'s' if len(series) > 1 else ''})",
                marker="o" if len(xs) <= 20 else None, ms=3)
        if len(series) > 1:
            ax.fill_between(xs, mean - std, mean + std, color=c, alpha=0.2, lw=0)
        all_x += list(xs)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    meta = axis_for(experiment, curve, sorted(set(all_x)))
    ax.set_xscale(meta.xscale)
    ax.set_yscale(meta.yscale)
    if meta.xscale == "log":            # a sweep: its own values as ticks, written plainly (4, 16, 64)
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

        xs = sorted(set(all_x))
        if len(xs) <= 12:
            ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_title(title + ("; band: ± 1 std over seeds" if any(len(r) > 1 for r in results.values()) else ""),
                 fontsize=9)
    ax.set_xlabel(meta.x)
    ax.set_ylabel(meta.y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_metric(results: dict[str, list[Any]], metric: str, path: Path, title: str,
                colours: Optional[dict[str, str]] = None) -> bool:
    """Per-arm metric: one dot per seed and the mean (arm colours as in the experiment's curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmlab.experiments.axes import metric_label

    arms = [a for a, runs in results.items() if any(metric in r.metrics for r in runs)]
    if not arms:
        return False
    colours = colours or arm_colours(list(results))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(arms) + 2), 3.6))
    for i, arm in enumerate(arms):
        vals = [r.metrics[metric] for r in results[arm] if metric in r.metrics]
        ax.scatter([i] * len(vals), vals, alpha=0.7, color=colours.get(arm))
        ax.hlines(np.mean(vals), i - 0.25, i + 0.25, color="k")
    ax.set_xticks(range(len(arms)), arms, rotation=20, fontsize=8)
    ax.set_xlabel("arm (dots: seeds; line: mean)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def experiment_figures(exp: Any, results: dict[str, list[Any]], folder: Path) -> list[Path]:
    """An experiment's figures in `folder`: its curves (bands, axes from metadata), the metric per arm and
    seed, and images its runs saved (`info["images"]`, first seed of each arm)."""
    folder.mkdir(parents=True, exist_ok=True)
    colours = arm_colours(list(exp.arms))
    plots = []
    for curve in exp.plots:
        p = folder / f"{curve.replace('/', '_')}.png"
        if plot_curves(results, curve, p, f"{exp.name}: {curve}", exp.name, colours):
            plots.append(p)
    p = folder / f"{exp.metric.replace('/', '_')}_by_arm.png"
    if plot_metric(results, exp.metric, p, f"{exp.name}: {exp.metric} per arm and seed", colours):
        plots.append(p)
    summary = getattr(exp, "summary_plots", None)   # cross-arm figures an experiment draws itself
    if summary is not None and any(results.get(a) for a in exp.arms):
        try:
            plots += [Path(q) for q in summary(results, folder) if Path(q).exists()]
        except Exception as e:  # a figure must not cost the verdict
            print(f"{exp.name}: summary plot failed: {type(e).__name__}: {e}")
    for a in exp.arms:
        for r in results.get(a, [])[:1]:
            d = folder / a / f"seed_{r.info.get('seed', 0)}"
            plots += [d / f for f in r.info.get("images", []) if (d / f).exists()]
    return plots


def sample_outputs(results: dict[str, list[Any]], limit: int = 4) -> dict[str, list]:
    """Text samples a run recorded (`info["examples"]` or `info["samples"]`: lists of strings or flat dicts),
    first seed of each arm, at most `limit` each."""
    out = {}
    for arm, runs in results.items():
        for r in runs[:1]:
            xs = r.info.get("examples") or r.info.get("samples")
            if isinstance(xs, list) and xs and all(isinstance(x, (str, dict)) for x in xs):
                out[arm] = [x if isinstance(x, str) else {str(k): str(v) for k, v in x.items()} for x in xs[:limit]]
    return out


def write_report(out: Path, rows: list[dict], failures: list[str], meta: dict, scale: str, seeds: Optional[int],
                 n_seeds: dict[str, int], label: str, summary: str = "") -> None:
    """README.md (forest plot first, claims table, sections), claims.json and report.html of a reproduce run."""
    import json
    import time

    from lmlab.forest import effect_text, plot_forest, row_effect
    from lmlab.io import atomic_write_text
    from lmlab.report_html import write_html

    forest = plot_forest(rows, out / "forest.png")
    seeds_txt = f"{seeds} seeds" if seeds is not None else \
        "seeds: " + ", ".join(sorted({str(n) for n in n_seeds.values()}))
    md = [f"# lmlab reproduce — {time.strftime('%Y-%m-%d %H:%M')} (scale {scale}, {seeds_txt}, code {label[:12]})", "",
          "Verdicts are computed from the measured numbers below; each rule is printed next to its row. "
          "The same report with sortable tables and embedded figures: [report.html](report.html).", ""]
    if summary:
        md += [f"**{summary}**", ""]
    if forest:
        md += ["![every claim: effect with its 95% CI](forest.png)", "",
               "*Forest plot: the technique's gain over the baseline on each claim's metric (> 0 = better in the "
               "claim's direction), as a % of the baseline mean, with its 95% confidence interval (Welch, or "
               "paired t where the arms of a seed share init and data); colour = verdict; † marks a claim whose verdict "
               "tests something else (a trend, a threshold, several parts: see its rule).*", ""]
    md += [claims_table(rows), ""]
    if failures:
        md += ["## Failures", ""] + [f"- {f}" for f in failures] + [""]
    for r in rows:
        md.append(_section(r, effect_text(row_effect(r))))
    md += ["## Run metadata", "", "```json", json.dumps(meta, indent=2), "```", ""]
    atomic_write_text(out / "README.md", "\n".join(md))
    atomic_write_text(out / "claims.json", json.dumps(rows, indent=2, default=float))
    write_html(out)


def _section(r: dict, effect: str) -> str:
    counts = r.get("runs") or {}
    per_seed = r.get("per_seed") or {}
    lines = "\n".join(f"| {a} | " + " | ".join("—" if v is None else f"{v:.4g}" for v in vals.values()) + " |"
                      for a, vals in per_seed.items())
    sec = [f"## `{r['name']}` — {r['claim']}", "", f"*{r['paper']}.* {r.get('description', '')}", "",
           f"**Verdict: {r['verdict']}.** Rule: {r['rule']}.", "",
           f"Effect ({r['technique_arm']} vs {r['baseline_arm']}, {r['metric']}, > 0 = better, 95% CI): {effect}.", "",
           f"Runs: {counts.get('ran', 0)} run now, {counts.get('reused', 0)} reused unchanged "
           f"({counts.get('stale', 0)} stale ones rerun); commits of the runs: "
           f"{', '.join(c[:12] for c in r.get('run_commits') or [])}.",
           "", f"| arm | {r['metric']} per seed |", "|---|---|", lines, ""]
    sec += [f"![{Path(p).stem}]({p})" for p in r.get("figures") or []]
    return "\n".join(sec) + "\n"


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
