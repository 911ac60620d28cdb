"""The live table of `lmlab reproduce`: experiments × arms × seeds, elapsed time and an ETA.

Each run is one cell: `✓` done now, `=` reused from the cache, `▶` running, `·` queued, `↻` retried, `✗` failed.
The ETA adds up the expected seconds of every run not finished yet, divided by the number of workers: a run's
expected seconds are those its previous result recorded (`info["seconds"]` in a stale `arm_result.json`), else
the mean of the runs of the same experiment and arm measured so far (this call or saved), else of the whole
experiment, else of every run measured so far.
"""
from __future__ import annotations

import time
from typing import Optional

GLYPH = {"reused": "=", "queued": "·", "running": "▶", "retry": "↻", "done": "✓", "failed": "✗"}
FINISHED = ("reused", "done", "failed")


def fmt_seconds(s: Optional[float]) -> str:
    if s is None or s != s:
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Board:
    """State of every (experiment, arm, seed) run; `__rich__` renders the table (rich.live.Live refreshes it)."""

    def __init__(self, workers: int = 1, clock=time.time):
        self.workers = max(1, workers)
        self.clock = clock
        self.t0 = clock()
        self.order: list[str] = []
        self.arms: dict[str, list[str]] = {}
        self.state: dict[tuple[str, str, int], str] = {}
        self.started: dict[tuple[str, str, int], float] = {}
        self.prior: dict[tuple[str, str, int], float] = {}      # recorded seconds of an earlier result
        self.measured: dict[tuple[str, str, int], float] = {}   # seconds of runs measured (this call or saved)
        self.verdicts: dict[str, str] = {}

    def add(self, exp: str, arm: str, seed: int, state: str = "queued", seconds: Optional[float] = None) -> None:
        if exp not in self.arms:
            self.order.append(exp)
            self.arms[exp] = []
        if arm not in self.arms[exp]:
            self.arms[exp].append(arm)
        k = (exp, arm, seed)
        self.state[k] = state
        if seconds is not None and seconds == seconds:
            (self.measured if state == "reused" else self.prior)[k] = float(seconds)

    def start(self, exp: str, arm: str, seed: int) -> None:
        k = (exp, arm, seed)
        if self.state.get(k) != "retry":
            self.state[k] = "running"
        self.started[k] = self.clock()

    def retry(self, exp: str, arm: str, seed: int) -> None:
        self.state[(exp, arm, seed)] = "retry"

    def finish(self, exp: str, arm: str, seed: int, ok: bool, seconds: Optional[float] = None) -> None:
        k = (exp, arm, seed)
        self.state[k] = "done" if ok else "failed"
        if ok:
            self.measured[k] = seconds if seconds is not None else self.clock() - self.started.get(k, self.clock())

    def decided(self, exp: str, verdict: str) -> None:
        self.verdicts[exp] = verdict

    # -- estimates
    def expected(self, k: tuple[str, str, int]) -> Optional[float]:
        if k in self.prior:
            return self.prior[k]
        exp, arm, _ = k
        for same in (lambda j: j[0] == exp and j[1] == arm, lambda j: j[0] == exp, lambda j: True):
            xs = [v for j, v in self.measured.items() if same(j)]
            if xs:
                return sum(xs) / len(xs)
        return None

    def eta(self) -> Optional[float]:
        now, left = self.clock(), 0.0
        for k, s in self.state.items():
            if s in FINISHED:
                continue
            e = self.expected(k)
            if e is None:
                return None
            if s == "running" or (s == "retry" and k in self.started):
                e = max(0.0, e - (now - self.started.get(k, now)))
            left += e
        return left / self.workers

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for s in self.state.values():
            c[s] = c.get(s, 0) + 1
        return c

    def __rich__(self):
        from rich.table import Table

        c = self.counts()
        done = sum(c.get(s, 0) for s in FINISHED)
        title = (f"lmlab reproduce: {done}/{len(self.state)} runs, elapsed {fmt_seconds(self.clock() - self.t0)}, "
                 f"ETA {fmt_seconds(self.eta())}")
        t = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for col in ("experiment", "arms × seeds", "runs", "elapsed", "verdict"):
            t.add_column(col, no_wrap=col != "arms × seeds")
        now = self.clock()
        for exp in self.order:
            keys = [k for k in self.state if k[0] == exp]
            cells = []
            for arm in self.arms[exp]:
                seeds = sorted(k[2] for k in keys if k[1] == arm)
                cells.append(f"{arm} " + "".join(GLYPH[self.state[(exp, arm, s)]] for s in seeds))
            fin = sum(self.state[k] in FINISHED for k in keys)
            el = sum(self.measured.get(k, 0.0) for k in keys if self.state[k] == "done") + \
                sum(now - self.started[k] for k in keys if self.state[k] in ("running", "retry") and k in self.started)
            t.add_row(exp, "  ".join(cells), f"{fin}/{len(keys)}", fmt_seconds(el), self.verdicts.get(exp, ""))
        return t


def summary_line(verdicts: list[str], counts: dict, failures: int, seconds: float) -> str:
    """`N claims: a reproduced, b not reproduced, c inconclusive; runs: x run, y reused, z failed; wall t`."""
    kinds: dict[str, int] = {}
    for v in verdicts:
        kinds[v] = kinds.get(v, 0) + 1
    order = ["reproduced", "not reproduced", "inconclusive"]
    parts = [f"{kinds[k]} {k}" for k in order + sorted(set(kinds) - set(order)) if kinds.get(k)]
    return (f"{len(verdicts)} claims: {', '.join(parts) or 'none'}; runs: {counts.get('ran', 0)} run, "
            f"{counts.get('reused', 0)} reused ({counts.get('stale', 0)} stale reruns), {failures} failed; "
            f"wall {fmt_seconds(seconds)}")
