"""The report's figures and pages: effects with 95% CIs against hand-computed values (Welch and paired), axis
metadata flowing from the experiment's curves to the matplotlib Axes, bands over seeds, report.html being
self-contained, and `lmlab report diff` on two small synthetic report folders."""
import json
import math
import re

import pytest

from lmlab.experiments.base import ArmResult, Experiment
from lmlab.forest import diff_claims, effect, effect_from_summary, row_effect

T975_DF4 = 2.776445     # Student t, 0.975 quantile, 4 degrees of freedom (printed tables)
T975_DF3 = 3.182446     # 3 degrees of freedom


def test_welch_effect_against_hand_values():
    # b = [1, 2, 3], t = [3, 4, 5]: means 2 and 4, variances 1 and 1, n = 3 each
    # SE = sqrt(1/3 + 1/3) = 0.816497; Welch df = (2/3)^2 / (2 (1/3)^2 / 2) = 4; gain = 2 (higher is better)
    e = effect([1, 2, 3], [3, 4, 5], direction="higher")
    se = math.sqrt(2 / 3)
    assert e["test"] == "Welch t" and e["gain"] == pytest.approx(2.0)
    assert e["se"] == pytest.approx(se) and e["df"] == pytest.approx(4.0)
    assert e["lo"] == pytest.approx(2 - T975_DF4 * se, abs=1e-5) and e["hi"] == pytest.approx(2 + T975_DF4 * se, abs=1e-5)
    assert e["relative"]["gain"] == pytest.approx(100.0)            # % of the baseline mean 2
    assert e["relative"]["lo"] == pytest.approx(100 * (2 - T975_DF4 * se) / 2, abs=1e-3)
    low = effect([1, 2, 3], [3, 4, 5], direction="lower")             # lower is better: the technique is worse
    assert low["gain"] == pytest.approx(-2.0) and low["hi"] == pytest.approx(-2 + T975_DF4 * se, abs=1e-5)
    # the same effect from the summary numbers of a claims row (rows written before rows carried effects)
    s = effect_from_summary(2.0, 1.0, 3, 4.0, 1.0, 3, direction="higher")
    assert (s["gain"], s["lo"], s["hi"]) == pytest.approx((e["gain"], e["lo"], e["hi"]))


def test_paired_effect_against_hand_values():
    # differences t - b = [0.5, 0.4, 0.7, 0.4]: mean 0.5, sd sqrt(0.06 / 3) = 0.141421, SE 0.0707107, df 3
    e = effect([1, 2, 3, 4], [1.5, 2.4, 3.7, 4.4], direction="higher", paired=True)
    assert e["test"] == "paired t" and e["df"] == 3
    assert e["gain"] == pytest.approx(0.5) and e["se"] == pytest.approx(0.0707107, abs=1e-7)
    assert e["lo"] == pytest.approx(0.5 - T975_DF3 * 0.0707107, abs=1e-5)
    assert e["hi"] == pytest.approx(0.5 + T975_DF3 * 0.0707107, abs=1e-5)
    # identical differences: an exact effect, zero-width interval; too few seeds: no estimate
    z = effect([1, 2], [1.5, 2.5], direction="higher", paired=True)
    assert (z["lo"], z["gain"], z["hi"]) == pytest.approx((0.5, 0.5, 0.5))
    assert math.isnan(effect([1], [2])["gain"]) and effect([1], [2])["relative"] is None


# ----------------------------------------------------------------------------------------- curves
def _results():
    def r(arm, seed, off):
        return ArmResult({"val_loss": 3.0 - off + 0.1 * seed},
                         {"val_loss": [(0, 5.0 - off + seed), (10, 4.0 - off + seed), (20, 3.0 - off + seed)],
                          "speedup_vs_batch": [(1, 1.0 + off), (4, 2.0 + off), (16, 3.0 + off), (64, 4.0 + off)],
                          "mystery": [(1, 1.0), (10, 2.0), (100, 3.0)]},
                         info={"seed": seed})
    return {"base": [r("base", s, 0.0) for s in range(3)], "tech": [r("tech", s, 0.5) for s in range(3)]}


def test_axis_metadata_flows_to_the_figure():
    import matplotlib.pyplot as plt

    from lmlab.experiments.axes import CURVES, axis_for
    from lmlab.report import arm_colours, curve_figure

    res = _results()
    fig = curve_figure(res, "speedup_vs_batch", "hydragen: speedup", "hydragen")
    ax = fig.axes[0]
    assert ax.get_xlabel() == CURVES["speedup_vs_batch"].x and "batch size" in ax.get_xlabel()
    assert ax.get_ylabel() == CURVES["speedup_vs_batch"].y and "×" in ax.get_ylabel()
    assert ax.get_xscale() == "log"                       # 1, 4, 16, 64: a geometric sweep
    plt.close(fig)
    fig = curve_figure(res, "val_loss", "x: val_loss", "any_experiment")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_xscale()) == ("training step", "linear")
    assert "nats/token" in ax.get_ylabel()
    # an arm has the same colour in every figure of an experiment
    colours = arm_colours(["base", "tech"])
    lines = {ln.get_label().split(" ")[0]: ln.get_color() for ln in ax.get_lines()}
    assert lines == colours
    plt.close(fig)
    # per-experiment overrides win; unknown curves fall back to their name and the geometric rule
    assert axis_for("model_collapse_tails", "test_error").yscale == "log"
    fig = curve_figure(res, "mystery", "x", "any_experiment")
    assert (fig.axes[0].get_xscale(), fig.axes[0].get_ylabel()) == ("log", "mystery")
    plt.close(fig)


def test_curve_band_is_mean_and_std_over_seeds():
    import matplotlib.pyplot as plt
    import numpy as np

    from lmlab.report import curve_band, curve_figure

    res = _results()
    xs, mean, std, n = curve_band([r.curves["val_loss"] for r in res["base"]])
    assert list(xs) == [0, 10, 20] and list(n) == [3, 3, 3]
    assert mean == pytest.approx([6.0, 5.0, 4.0]) and std == pytest.approx([1.0, 1.0, 1.0])   # seeds +0, +1, +2
    fig = curve_figure(res, "val_loss", "t", "e")
    bands = fig.axes[0].collections
    assert len(bands) == 2                                  # one shaded band per arm
    verts = bands[0].get_paths()[0].vertices
    assert np.isclose(verts[:, 1].max(), 7.0) and np.isclose(verts[:, 1].min(), 3.0)   # mean ± std
    plt.close(fig)


# ------------------------------------------------------------------------------------ report folders
def _row(name, verdict, b, t, seeds=3, direction="lower", track="sanity", effect_=None):
    r = {"name": name, "paper": "P", "claim": f"claim of {name}", "track": track, "metric": "val_loss",
         "direction": direction, "baseline_arm": "base", "technique_arm": "tech", "baseline": list(b),
         "technique": list(t), "verdict": verdict, "rule": "r", "seeds": seeds, "n": {"base": seeds, "tech": seeds},
         "scale": "quick", "commit": "0" * 40}
    if effect_ is not None:
        r["effect"] = effect_
    return r


def _folder(path, rows, figure=True):
    path.mkdir(parents=True)
    (path / "claims.json").write_text(json.dumps(rows))
    if figure:
        from lmlab.forest import plot_forest

        plot_forest(rows, path / "forest.png")
    return path


def test_report_diff_on_two_report_folders(tmp_path, capsys):
    from lmlab.cli import main

    old = _folder(tmp_path / "old", [_row("a", "reproduced", (3.0, 0.1), (2.0, 0.1)),
                                     _row("b", "inconclusive", (3.0, 0.5), (2.8, 0.5)),
                                     _row("c", "reproduced", (1.0, 0.1), (0.5, 0.1)),
                                     _row("gone", "reproduced", (1.0, 0.1), (0.5, 0.1))])
    new = _folder(tmp_path / "new", [_row("a", "reproduced", (3.0, 0.1), (2.0, 0.1)),       # unchanged
                                     _row("b", "not reproduced", (3.0, 0.1), (3.5, 0.1)),   # verdict + effect
                                     _row("c", "reproduced", (1.0, 0.2), (0.5, 0.2)),       # CI only
                                     _row("added", "inconclusive", (1.0, 0.1), (1.0, 0.1))])
    d = {x["name"]: x for x in diff_claims(json.loads((old / "claims.json").read_text()),
                                           json.loads((new / "claims.json").read_text()))}
    assert d["a"]["changed"] == [] and d["b"]["changed"] == ["verdict", "effect", "CI"]
    assert d["c"]["changed"] == ["CI"] and d["added"]["changed"] == ["added"] and d["gone"]["changed"] == ["removed"]
    assert d["b"]["new_effect"]["gain"] == pytest.approx(-0.5) and d["b"]["old_effect"]["gain"] == pytest.approx(0.2)
    out = tmp_path / "diff"
    with pytest.raises(SystemExit) as e:
        main(["report", "diff", str(old), str(new / "claims.json"), "--out", str(out)])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "| `b` | verdict, effect, CI | **inconclusive → not reproduced** |" in printed
    assert "4 of 5 claims changed" in printed
    md = (out / "diff.md").read_text()
    assert md.index("`b`") < md.index("`a`")             # changed claims first
    assert (out / "diff_forest.png").stat().st_size > 5000
    assert len(json.loads((out / "diff.json").read_text())) == 5
    with pytest.raises(SystemExit) as e:                 # a folder without claims.json: one line, exit 2
        main(["report", "diff", str(tmp_path), str(new)])
    assert e.value.code == 2


def test_report_html_is_self_contained(tmp_path):
    from lmlab.report_html import write_html

    e = effect([3.0, 3.1, 2.9], [2.0, 2.1, 1.9])
    rows = [_row("a", "reproduced", (3.0, 0.1), (2.0, 0.1), effect_=e),
            _row("b <i>", "inconclusive", (3.0, 0.5), (2.8, 0.5), track="arch")]
    out = _folder(tmp_path / "rep", rows)
    (out / "a").mkdir()
    (out / "a" / "val_loss.png").write_bytes((out / "forest.png").read_bytes())
    rows[0].update(figures=["a/val_loss.png"], per_seed={"base": {"0": 3.0, "1": 3.1}}, configs={"base": ["a/base/seed_0/config.yaml"]},
                   samples={"tech": [{"prompt": "p", "output": "o"}]})
    (out / "claims.json").write_text(json.dumps(rows))
    page = write_html(out).read_text()
    assert page.count('class="claim"') == 2 and "b &lt;i&gt;" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2          # forest + the curve, embedded
    assert not re.search(r'(src|href)="(https?:)?//', page)                  # nothing fetched from anywhere
    assert 'href="a/base/seed_0/config.yaml"' in page and "output: o" in page
    assert row_effect(rows[0])["gain"] == pytest.approx(e["gain"])
