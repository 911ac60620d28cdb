"""The README catalogue is generated from results/claims.json + results/catalogue.yaml (`lmlab report readme`):
the committed table must equal what the committed claims give, and those claims must come from one
`lmlab reproduce` run at the commit that adds them (or its parent)."""
import argparse
import json
import shutil
import subprocess

import pytest

from lmlab import report
from lmlab.registry import EXPERIMENTS

CLAIMS = report.RESULTS_DIR / "claims.json"
README = report.REPO / "README.md"
NO_CLAIMS = ("results/claims.json is not committed yet: run `lmlab reproduce --all --seeds 3 --out reports/all` "
             "at a commit, then `lmlab report readme --from reports/all`, and commit results/ with README.md")


def _registered() -> list[str]:
    """lmlab's own experiments (tests register fakes of their own)."""
    return sorted(n for n, e in EXPERIMENTS.items() if getattr(e.run, "__module__", "").startswith("lmlab."))


def _rows(block: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip()[1:-1].split(" | ")]
            for line in block.splitlines() if line.startswith("| ") and not line.startswith("| Paper |")]


def test_catalogue_lists_every_experiment_once():
    listed = [e for r in report.load_catalogue() for e in r.get("experiments", [])]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == _registered(), "add the experiment to results/catalogue.yaml"


def test_readme_columns_match_catalogue():
    """Paper, component, test and experiment columns of README.md are those of catalogue.yaml, row by row, and
    so is the status of every row without an experiment."""
    cat = report.load_catalogue()
    want = _rows(report.catalogue_table(cat, {}))
    have = _rows(report.current_block(README.read_text()))
    assert [r[:4] for r in have] == [r[:4] for r in want]
    assert [h for h, c in zip(have, cat) if not c.get("experiments")] == \
        [w for w, c in zip(want, cat) if not c.get("experiments")]


def test_readme_table_matches_committed_claims():
    if not CLAIMS.exists():
        pytest.skip(NO_CLAIMS)
    assert report.current_block(README.read_text()) == report.readme_block(CLAIMS), \
        "README catalogue differs from results/claims.json: run `lmlab report readme`"


def _git(*args) -> str:
    return subprocess.run(["git", *args], cwd=report.REPO, capture_output=True, text=True, timeout=30).stdout.strip()


def test_claims_come_from_one_run_at_their_commit():
    if not CLAIMS.exists():
        pytest.skip(NO_CLAIMS)
    meta = json.loads((report.RESULTS_DIR / "reproduce.json").read_text())
    rows = json.loads(CLAIMS.read_text())
    assert "uncommitted" not in meta["code_version"], "the run was made from uncommitted code"
    assert {r["commit"] for r in rows} == {meta["code_version"]}, "claims.json mixes runs of several reproduce calls"
    assert sorted(r["name"] for r in rows) == _registered(), "the committed run must be `reproduce --all`"
    if not _git("rev-parse", "HEAD"):
        pytest.skip("not a git checkout")
    pending = _git("status", "--porcelain", "--", str(CLAIMS))
    if pending:   # about to be committed: its run must be at HEAD, the new commit's parent
        allowed = {_git("rev-parse", "HEAD")}
    else:
        added = _git("log", "-1", "--format=%H", "--", str(CLAIMS))
        if not added:
            pytest.skip("history too shallow to find the commit that added results/claims.json")
        allowed = {added, _git("rev-parse", f"{added}^")}
    assert meta["git_commit"] in allowed, (meta["git_commit"], allowed)


# -- the machinery, on synthetic claims in a temporary directory -------------------------------------------

def _fake_claims(names):
    return [{"name": n, "paper": "P", "claim": "c", "metric": "val_loss", "direction": "lower",
             "baseline_arm": "base", "technique_arm": "tech", "baseline": [3.0, 0.1], "technique": [2.0, 0.05],
             "verdict": "reproduced", "rule": "r", "seeds": 3, "n": {"base": 3, "tech": 3}, "scale": "quick",
             "commit": "0123456789abcdef"} for n in names]


def test_report_readme_rewrites_and_checks(tmp_path, capsys):
    from lmlab.experiments.cli import _report_readme

    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps(_fake_claims(_registered())))
    readme = tmp_path / "README.md"
    shutil.copyfile(README, readme)
    args = argparse.Namespace(from_dir=None, claims=claims, readme=readme, check=True, allow_uncommitted=False)
    if report.current_block(readme.read_text()) != report.readme_block(claims):
        assert _report_readme(args) == 1
    args.check = False
    assert _report_readme(args) == 0
    text = readme.read_text()
    assert text.count(report.BEGIN) == 1 and "`0123456789ab`" in text
    assert "| `bigger_model` | **reproduced**: base 3 ± 0.1 vs tech 2 ± 0.05 (val_loss ↓), 3 seeds — d=32×1" in text
    assert text.split(report.BEGIN)[0] == README.read_text().split(report.BEGIN)[0]   # outside untouched
    args.check = True
    assert _report_readme(args) == 0
    claims.write_text(json.dumps(_fake_claims(_registered())[1:]))
    assert _report_readme(args) == 1
    assert "no result for" in report.readme_block(claims)


def test_report_readme_from_refuses_uncommitted_runs(tmp_path):
    from lmlab.experiments.cli import _report_readme

    run = tmp_path / "run"
    run.mkdir()
    (run / "claims.json").write_text(json.dumps(_fake_claims(["bigger_model"])))
    (run / "reproduce.json").write_text(json.dumps({"code_version": "abc+uncommitted:123", "git_dirty": True}))
    args = argparse.Namespace(from_dir=run, claims=tmp_path / "results" / "claims.json", readme=tmp_path / "R.md",
                              check=True, allow_uncommitted=False)
    with pytest.raises(ValueError, match="uncommitted"):
        _report_readme(args)
