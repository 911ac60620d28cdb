"""Initialisation and numerics are bitwise those of another checkout: every configs/*.yaml model (and the
component mixes in tests/_init_dump.py) built with seed 0 has the same parameters, loss and gradients.

Set LMLAB_BASELINE to a checkout of the code to compare against (e.g. a `git worktree` of main) to run it:
    LMLAB_BASELINE=../main python -m pytest tests/test_init_equivalence.py
Both sides run in subprocesses of this interpreter with the same thread count, so the comparison is exact
(sha256 of every tensor). Without LMLAB_BASELINE the test is skipped: the hashes depend on the CPU's vector
units and thread count, so they cannot be a committed golden file.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BASELINE = os.environ.get("LMLAB_BASELINE")


def _dump(pythonpath: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, str(HERE / "_init_dump.py"), str(out)], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.skipif(not BASELINE, reason="set LMLAB_BASELINE=<checkout> to compare against it")
def test_every_config_initialises_and_computes_bitwise_as_the_baseline(tmp_path):
    base = _dump(str(Path(BASELINE).resolve()), tmp_path / "base.json")
    ours = _dump(str(HERE.parent), tmp_path / "ours.json")
    assert sorted(base) == sorted(ours)
    for name in base:
        for part in ("init", "grads"):
            diff = [k for k in base[name][part] if base[name][part][k] != ours[name][part].get(k)]
            assert not diff and sorted(base[name][part]) == sorted(ours[name][part]), (name, part, diff[:5])
        assert base[name]["loss"] == ours[name]["loss"], name
