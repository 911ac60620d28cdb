"""Effects of claims with their 95% confidence intervals, the forest plot of a report, and `lmlab report diff`.

The effect of a claim is the technique's gain over the baseline on the claim's metric, oriented so that > 0
means the technique is better (baseline − technique when lower is better, technique − baseline otherwise):
the same orientation, standard error and Student-t degrees of freedom as the verdict tests of
`lmlab.experiments.base.difference` (Welch–Satterthwaite for independent arms, n − 1 for paired seeds). The
95% interval is gain ± t(0.975, df) · SE. Claims on different metrics are drawn on one axis as a percentage of
the baseline mean (`relative`); where the baseline mean is 0 the row keeps its metric units and says so.

A forest plot (one row per claim: the effect, its CI, the zero line, the verdict as colour) is the first
figure of a `lmlab reproduce` report; `diff_claims` + `plot_forest_pair` compare two reports claim by claim.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

LEVEL = 0.95
COLOURS = {"reproduced": "#1a9850", "not reproduced": "#d73027", "inconclusive": "#f39c12"}
OTHER = "#7f7f7f"


def _nan_effect(test: str, n) -> dict:
    return {"gain": math.nan, "lo": math.nan, "hi": math.nan, "se": math.nan, "df": math.nan, "test": test,
            "n": list(n), "baseline_mean": math.nan, "relative": None, "level": LEVEL}


def _with_ci(gain: float, se: float, df: float, test: str, n, baseline_mean: float, level: float) -> dict:
    from scipy import stats

    if not (math.isfinite(gain) and math.isfinite(se) and math.isfinite(df)):
        return {**_nan_effect(test, n), "gain": gain, "baseline_mean": baseline_mean}
    h = float(stats.t.ppf(0.5 + level / 2, df)) * se if se > 0 else 0.0
    rel = None
    if math.isfinite(baseline_mean) and baseline_mean != 0:
        s = 100.0 / abs(baseline_mean)
        rel = {"gain": gain * s, "lo": (gain - h) * s, "hi": (gain + h) * s}
    return {"gain": gain, "lo": gain - h, "hi": gain + h, "se": se, "df": df, "test": test, "n": list(n),
            "baseline_mean": baseline_mean, "relative": rel, "level": level}


def effect(baseline: Sequence[float], technique: Sequence[float], direction: str = "lower", paired: bool = False,
           level: float = LEVEL) -> dict:
    """Gain of the technique (> 0: better) with its two-sided `level` CI, from per-seed values.

    Returns {gain, lo, hi, se, df, test, n, baseline_mean, relative: {gain, lo, hi} in % of |baseline mean|
    or None, level}; NaNs (and relative None) when an arm has fewer than 2 values (pairs when paired)."""
    from lmlab.experiments.base import difference

    b = [float(x) for x in baseline if x is not None and math.isfinite(float(x))]
    t = [float(x) for x in technique if x is not None and math.isfinite(float(x))]
    if paired and (len(b) != len(baseline) or len(t) != len(technique)):
        return _nan_effect("paired t", (min(len(b), len(t)),))
    d = difference(b, t, direction, paired)
    if not d.ok:
        return _nan_effect(d.test, d.n)
    return _with_ci(d.gain, d.se, d.df, d.test, d.n, float(np.mean(b)), level)


def effect_from_summary(mb: float, sb: float, nb: int, mt: float, st: float, nt: int, direction: str = "lower",
                        level: float = LEVEL) -> dict:
    """The Welch effect from each arm's mean, standard deviation (ddof 1) and count: for claims rows written
    before rows carried their effect (the paired effect needs per-seed values)."""
    vals = (mb, sb, mt, st)
    if nb < 2 or nt < 2 or any(v is None or not math.isfinite(v) for v in vals):
        return _nan_effect("Welch t", (nb, nt))
    sign = 1.0 if direction == "higher" else -1.0
    vb, vt = sb ** 2 / nb, st ** 2 / nt
    se = math.sqrt(vb + vt)
    den = (vb ** 2 / (nb - 1) if vb else 0.0) + (vt ** 2 / (nt - 1) if vt else 0.0)
    df = (vb + vt) ** 2 / den if den > 0 else float(nb + nt - 2)
    return _with_ci(sign * (mt - mb), se, df, "Welch t", (nb, nt), mb, level)


def effect_of_results(results: dict, baseline: str, technique: str, metric: str, direction: str,
                      paired: bool) -> dict:
    """`effect` of a claim from its runs ({arm: [ArmResult]}); seeds are paired by `info["seed"]`."""
    from lmlab.experiments.base import arm_values

    if any(metric not in r.metrics for a in (baseline, technique) for r in results.get(a, [])):
        return _nan_effect("paired t" if paired else "Welch t", (0,))
    b, t = arm_values(results, baseline, technique, metric, paired)
    return effect(b, t, direction, paired)


def row_effect(row: dict) -> dict:
    """A claims row's effect: the one it carries, else the Welch effect from its summary numbers."""
    if row.get("effect"):
        return row["effect"]
    b, t = row.get("baseline") or [math.nan, math.nan], row.get("technique") or [math.nan, math.nan]
    n = row.get("n") or {}
    nb, nt = n.get(row.get("baseline_arm"), row.get("seeds") or 0), n.get(row.get("technique_arm"), row.get("seeds") or 0)
    return effect_from_summary(_f(b[0]), _f(b[1]), nb, _f(t[0]), _f(t[1]), nt, row.get("direction", "lower"))


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _fmt(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x + 0.0:+.3g}"      # + 0.0: no "-0"


def effect_text(e: dict) -> str:
    """`+0.67 [+0.55, +0.79]` (metric units) with the relative effect when there is one."""
    if not math.isfinite(e.get("gain", math.nan)):
        return "no estimate"
    s = f"{_fmt(e['gain'])} [{_fmt(e['lo'])}, {_fmt(e['hi'])}]"
    if e.get("relative"):
        s += f" ({e['relative']['gain'] + 0.0:+.3g} %)"
    return s


def _xy(e: dict) -> tuple[float, float, float, bool]:
    """(gain, lo, hi, relative?) as plotted: % of the baseline mean where there is one, else metric units."""
    r = e.get("relative")
    if r:
        return r["gain"], r["lo"], r["hi"], True
    return e.get("gain", math.nan), e.get("lo", math.nan), e.get("hi", math.nan), False


def _setup_axis(ax, values: list[float]) -> None:
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    if finite and max(finite) > 100:
        ax.set_xscale("symlog", linthresh=10)
    ax.axvline(0, color="k", lw=0.8)
    ax.grid(alpha=0.3, axis="x")
    ax.set_xlabel(f"effect: technique's gain over the baseline, % of the baseline mean ({LEVEL:.0%} CI; > 0 = better)")


def plot_forest(rows: list[dict], path: Path, title: str = "Every claim: effect with its 95% CI") -> Optional[Path]:
    """One row per claim: the effect (% of the baseline mean) and its 95% CI, the zero line, the verdict as
    colour. Rows without an estimate are listed with 'no estimate'. Returns the path, or None without rows."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(rows)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.38 * n))
    labels, vals, other = [], [], False
    for i, r in enumerate(rows):
        y = n - 1 - i
        e = row_effect(r)
        g, lo, hi, rel = _xy(e)
        c = COLOURS.get(r.get("verdict"), OTHER)
        arrow = "↓" if r.get("direction") == "lower" else "↑"
        mark = "" if direct_test(r) else " †"
        other = other or bool(mark)
        labels.append((y, f"{r['name']} ({r.get('metric', '?')} {arrow}){mark}"))
        if math.isfinite(g):
            ax.errorbar([g], [y], xerr=[[g - lo], [hi - g]] if math.isfinite(lo) else None, fmt="o", color=c,
                        ecolor=c, capsize=3, ms=6)
            vals += [g, lo, hi]
            txt = effect_text(e) + ("" if rel else " (metric units: baseline mean 0)")
        else:
            txt = "no estimate (metric missing in an arm, or < 2 seeds)"
        ax.annotate(f"{r.get('verdict', '?')}: {txt}", (1.01, y), xycoords=("axes fraction", "data"),
                    va="center", fontsize=7, color=c)
    _setup_axis(ax, vals)
    ax.set_yticks([y for y, _ in labels], [lab for _, lab in labels], fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_title(title, fontsize=10, pad=22)
    handles = [Line2D([], [], marker="o", color=c, ls="", label=v) for v, c in COLOURS.items()]
    ax.legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False)
    if other:
        ax.annotate("† the verdict's rule is not this two-arm difference (a trend, a threshold or several parts): "
                    "see the rule in its section", (0, 0), xycoords="figure fraction", xytext=(4, 2),
                    textcoords="offset points", fontsize=7, color=OTHER)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def direct_test(row: dict) -> bool:
    """Whether the row's verdict tested this very difference (technique vs baseline on the metric: compare,
    noninferior or equivalent), as opposed to a trend, a threshold or a combination of parts."""
    return (row.get("extra") or {}).get("test") in ("Welch t", "paired t")


# ---------------------------------------------------------------------------------------------- diff
def load_rows(src: Path) -> list[dict]:
    """Claims rows of a report folder (its claims.json) or of a claims.json file."""
    src = Path(src)
    p = src / "claims.json" if src.is_dir() else src
    if not p.exists():
        raise FileNotFoundError(f"{src}: no claims.json (give a `lmlab reproduce` output folder or a claims.json)")
    try:
        rows = json.loads(p.read_text())
    except ValueError as e:
        raise ValueError(f"{p}: not JSON ({e})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r for r in rows):
        raise ValueError(f"{p}: not a claims list (rows with a 'name')")
    return rows


def _close(a: float, b: float, tol: float = 1e-9) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.isfinite(a) == math.isfinite(b)
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def diff_claims(old: list[dict], new: list[dict]) -> list[dict]:
    """Claim by claim (names of both, in new's order then old-only ones): verdicts, effects and CIs before
    and after, and what changed ("verdict", "effect", "CI", "added", "removed")."""
    o, n = {r["name"]: r for r in old}, {r["name"]: r for r in new}
    names = [r["name"] for r in new] + [r["name"] for r in old if r["name"] not in n]
    out = []
    for name in names:
        a, b = o.get(name), n.get(name)
        ea, eb = (row_effect(a) if a else None), (row_effect(b) if b else None)
        changed = []
        if a is None:
            changed = ["added"]
        elif b is None:
            changed = ["removed"]
        else:
            if a.get("verdict") != b.get("verdict"):
                changed.append("verdict")
            if not _close(ea["gain"], eb["gain"]):
                changed.append("effect")
            if not (_close(ea["lo"], eb["lo"]) and _close(ea["hi"], eb["hi"])):
                changed.append("CI")
        ref = b or a
        out.append({"name": name, "metric": ref.get("metric"), "direction": ref.get("direction"),
                    "old_verdict": a.get("verdict") if a else None, "new_verdict": b.get("verdict") if b else None,
                    "old_effect": ea, "new_effect": eb, "changed": changed})
    return out


def diff_table(diff: list[dict]) -> str:
    """Markdown: one line per claim, changed claims first."""
    head = ("| Claim | Changed | Verdict (old → new) | Effect old [95% CI] | Effect new [95% CI] |\n"
            "|---|---|---|---|---|\n")
    rows = sorted(diff, key=lambda d: not d["changed"])
    lines = []
    for d in rows:
        v = f"{d['old_verdict'] or '—'} → {d['new_verdict'] or '—'}"
        if "verdict" in d["changed"]:
            v = f"**{v}**"
        eo = effect_text(d["old_effect"]) if d["old_effect"] else "—"
        en = effect_text(d["new_effect"]) if d["new_effect"] else "—"
        lines.append(f"| `{d['name']}` | {', '.join(d['changed']) or 'unchanged'} | {v} | {eo} | {en} |")
    return head + "\n".join(lines) + "\n"


def plot_forest_pair(diff: list[dict], path: Path, old_label: str = "old", new_label: str = "new") -> Optional[Path]:
    """Paired forest plot: per claim the old effect (hollow, above) and the new one (filled, below) with their
    95% CIs, coloured by each side's verdict; changed claims are marked with *."""
    if not diff:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(diff)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.5 * n))
    vals, ticks = [], []
    for i, d in enumerate(diff):
        y = n - 1 - i
        for e, v, dy, filled in ((d["old_effect"], d["old_verdict"], 0.17, False),
                                 (d["new_effect"], d["new_verdict"], -0.17, True)):
            if not e:
                continue
            g, lo, hi, _ = _xy(e)
            if not math.isfinite(g):
                continue
            c = COLOURS.get(v, OTHER)
            ax.errorbar([g], [y + dy], xerr=[[g - lo], [hi - g]] if math.isfinite(lo) else None, fmt="o",
                        color=c, ecolor=c, capsize=3, ms=6, mfc=c if filled else "white")
            vals += [g, lo, hi]
        mark = " *" if d["changed"] else ""
        ticks.append((y, f"{d['name']}{mark}"))
    _setup_axis(ax, vals)
    ax.set_yticks([y for y, _ in ticks], [t for _, t in ticks], fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_title(f"Claims, {old_label} (hollow) vs {new_label} (filled); * = verdict, effect or CI changed",
                 fontsize=9, pad=22)
    handles = [Line2D([], [], marker="o", color=c, ls="", label=v) for v, c in COLOURS.items()]
    ax.legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
