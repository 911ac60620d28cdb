"""`lmlab reproduce --jobs N` and `--ray`: the same runs, reused or rerun by the same rule, give the same claims
as the sequential path; a run whose worker is killed (kill -9) is retried once, and a run that fails twice is
reported, never dropped. Fake experiments live in a throw-away package on sys.path (workers import it)."""
import json
import os
import sys

import pytest

from lmlab.experiments.parallel import threads_per_worker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _helpers import fake_package  # noqa: E402

EXPS = '''
import math
import os
import signal
from pathlib import Path

from lmlab.experiments.base import ArmResult, Experiment, compare
from lmlab.registry import EXPERIMENTS

ATTEMPTS = Path("ATTEMPTS_DIR")


def _value(arm, seed):
    return (3.0 if arm == "base" else 2.5) + 0.1 * math.sin(7 * seed + len(arm))


def run_det(arm, seed, scale, out):
    v = _value(arm, seed)
    (out / "config.yaml").write_text(f"arm: {arm}\\nseed: {seed}\\n")
    return ArmResult({"val_loss": v, "seed_echo": float(seed)},
                     {"val_loss": [(s, v + 1.0 / (1 + s)) for s in (0, 10, 20)],
                      "speedup_vs_batch": [(b, b ** 0.5 + 0.01 * seed) for b in (1, 2, 4, 8)]},
                     info={"seed": seed, "examples": [{"prompt": "p", "output": f"{arm}-{seed}"}]})


def _attempt(tag, out):
    d = ATTEMPTS / Path(out).parents[2].name          # one count per report folder
    d.mkdir(parents=True, exist_ok=True)
    f = d / tag
    n = len(f.read_text().splitlines()) + 1 if f.exists() else 1
    f.write_text("x\\n" * n)
    return n


def run_killed_once(arm, seed, scale, out):
    if arm == "tech" and seed == 1 and _attempt("once", out) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return ArmResult({"val_loss": _value(arm, seed)}, info={"seed": seed})


def run_always_dies(arm, seed, scale, out):
    if arm == "tech" and seed == 0:
        _attempt("always", out)
        os.kill(os.getpid(), signal.SIGKILL)
    return ArmResult({"val_loss": _value(arm, seed)}, info={"seed": seed})


def _reg(name, run, paired=False):
    EXPERIMENTS.register(name, Experiment(name=name, paper="Fake", claim="tech beats base", metric="val_loss",
                                          run=run, arms=["base", "tech"], baseline="base", technique="tech",
                                          paired=paired, plots=["val_loss", "speedup_vs_batch"]))


_reg("DET_TAG", run_det)
_reg("PAIRED_TAG", run_det, paired=True)
_reg("ONCE_TAG", run_killed_once)
_reg("ALWAYS_TAG", run_always_dies)
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    with fake_package(tmp_path, monkeypatch, "fkp") as (tag, pkg):
        (pkg / "exps.py").write_text(EXPS.replace("TAG", tag).replace("ATTEMPTS_DIR", str(tmp_path / "attempts")))
        mod = __import__(f"fkp_{tag}.exps", fromlist=["x"])

        class F:
            pass

        f = F()
        f.tag, f.mod, f.tmp = tag, mod, tmp_path
        f.det = [f"DET_{tag}", f"PAIRED_{tag}"]
        f.kill = [f"ONCE_{tag}", f"ALWAYS_{tag}"]
        yield f


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")        # a busy machine registers slowly
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([repo] + [p for p in sys.path if p])}})
    yield ray
    ray.shutdown()


def _claims(out):
    rows = json.loads((out / "claims.json").read_text())
    keep = ("name", "verdict", "rule", "baseline", "technique", "effect", "per_seed", "n", "configs", "samples")
    return [{k: r.get(k) for k in keep} for r in rows]


def _repro(names, out, **kw):
    from lmlab.experiments.runner import reproduce

    return reproduce(names, "quick", 3, out, show_progress=False, **kw)


def test_threads_per_worker_fit_the_cores():
    assert threads_per_worker(2, 2) == 1 and threads_per_worker(2, 16) == 8 and threads_per_worker(3, 16) == 5
    assert threads_per_worker(8, 2) == 1
    for jobs in range(1, 9):
        assert jobs * threads_per_worker(jobs, 16) <= 16


def _check_kills(f, out):
    """ONCE: its worker is killed on the first try, the retry runs it; ALWAYS: killed twice, reported."""
    attempts = f.tmp / "attempts" / out.name
    assert len((attempts / "once").read_text().splitlines()) == 2
    assert len((attempts / "always").read_text().splitlines()) == 2          # no third try
    rows = {r["name"]: r for r in json.loads((out / "claims.json").read_text())}
    assert rows[f"ONCE_{f.tag}"]["n"] == {"base": 3, "tech": 3}
    assert rows[f"ALWAYS_{f.tag}"]["n"] == {"base": 3, "tech": 2}
    md = (out / "README.md").read_text()
    assert f"ALWAYS_{f.tag}/tech/seed 0" in md.split("## Failures")[1] and "failed twice" in md
    return (out / f"ALWAYS_{f.tag}" / "tech" / "seed_0" / "error.txt").read_text()


def test_jobs_give_the_sequential_claims_and_retry_a_killed_worker(fake):
    seq = _repro(fake.det, fake.tmp / "seq")
    par = _repro(fake.det + fake.kill, fake.tmp / "jobs", jobs=2)
    assert _claims(seq) == _claims(par)[:2]
    assert {r["verdict"] for r in _claims(seq)} == {"reproduced"} and _claims(seq)[1]["effect"]["test"] == "paired t"
    for out in (seq, par):                  # every run folder written by its task, the report by the driver
        for name in fake.det:
            for arm in ("base", "tech"):
                for s in range(3):
                    assert (out / name / arm / f"seed_{s}" / "arm_result.json").exists()
        assert (out / "report.html").exists() and (out / "forest.png").exists()
    assert "exited with code -9" in _check_kills(fake, par)
    # the parallel path keeps the cache rule: a rerun reuses every finished run, reruns the failed one
    _repro(fake.det, fake.tmp / "jobs", jobs=2)
    assert all(r["runs"] == {"reused": 6, "ran": 0, "stale": 0}
               for r in json.loads((par / "claims.json").read_text()))


def test_ray_gives_the_sequential_claims_and_retries_a_killed_task(fake, ray_cluster):
    seq = _repro(fake.det, fake.tmp / "seq")
    ray = _repro(fake.det + fake.kill, fake.tmp / "ray", ray=True, jobs=2)
    assert _claims(seq) == _claims(ray)[:2]
    assert "Ray task failed" in _check_kills(fake, ray)


def test_live_table_eta_from_recorded_durations_and_summary_line():
    from rich.console import Console

    from lmlab.experiments.progress import Board, summary_line

    now = [100.0]
    b = Board(workers=2, clock=lambda: now[0])
    b.add("e", "base", 0, "reused", seconds=10.0)        # saved run: measured 10 s
    b.add("e", "base", 1, "queued", seconds=30.0)        # a stale result recorded 30 s: its estimate
    b.add("e", "tech", 0, "queued")                      # no record: mean of e/tech, else of e (10 s)
    b.add("f", "x", 0, "queued")                         # no record for f: mean of every measured run
    assert b.expected(("e", "base", 1)) == 30.0 and b.expected(("e", "tech", 0)) == 10.0
    assert b.eta() == pytest.approx((30 + 10 + 10) / 2)
    b.start("e", "base", 1)
    now[0] += 12
    assert b.eta() == pytest.approx((18 + 10 + 10) / 2)  # the running one has 30 - 12 s left
    b.finish("e", "base", 1, True, 12.0)
    b.start("e", "tech", 0)
    b.retry("e", "tech", 0)
    b.decided("e", "reproduced")
    con = Console(record=True, width=150)
    con.print(b)
    text = con.export_text()
    assert "base =✓" in text and "tech ↻" in text and "x ·" in text and "2/3" in text and "reproduced" in text
    assert "ETA" in text and "elapsed 0:12" in text
    line = summary_line(["reproduced", "inconclusive", "reproduced"], {"ran": 5, "reused": 2, "stale": 1}, 1, 75)
    assert line == ("3 claims: 2 reproduced, 1 inconclusive; runs: 5 run, 2 reused (1 stale reruns), 1 failed; "
                    "wall 1:15")
