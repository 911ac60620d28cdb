"""Side-by-side timing on a shared, noisy machine: every side runs once per round, rounds repeat, and the
order inside a round rotates (A B C, B C A, C A B, …), so drift and order effects hit every side alike.

    times = interleaved({"ours": f, "peer": g}, reps=5, warmup=1)     # {"ours": [Sample, …], …}
    summary(times, "ours", "peer")  # median time of each side, and the median of the per-round ratios

Each side is a zero-argument callable; it may return a dict of extra numbers, kept in Sample.extra. Times are
process CPU seconds (the right clock with one torch thread while other jobs load the machine) and wall
seconds, both recorded.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Sample:
    cpu: float
    wall: float
    extra: dict = field(default_factory=dict)


def interleaved(sides: dict[str, Callable[[], Any]], reps: int = 5, warmup: int = 1,
                log: Callable[[str], None] = print) -> dict[str, list[Sample]]:
    names = list(sides)
    for _ in range(warmup):
        for n in names:
            sides[n]()
    out: dict[str, list[Sample]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0, c0 = time.perf_counter(), time.process_time()
            extra = sides[n]()
            out[n].append(Sample(time.process_time() - c0, time.perf_counter() - t0,
                                 extra if isinstance(extra, dict) else {}))
        log(f"round {r + 1}/{reps}: " + ", ".join(f"{n} {out[n][-1].cpu:.2f} CPU-s" for n in names))
    return out


def median_of(samples: list[Sample], what: str = "cpu") -> float:
    return statistics.median(getattr(s, what) if what in ("cpu", "wall") else s.extra[what] for s in samples)


def ratio(times: dict[str, list[Sample]], slow: str, fast: str, what: str = "cpu") -> dict:
    """How many times faster `fast` is than `slow`: the median of the per-round ratios (each round's pair ran
    back to back) and the ratio of the medians; both are reported, the first is the headline."""
    def get(s: Sample) -> float:
        return getattr(s, what) if what in ("cpu", "wall") else s.extra[what]

    per_round = [get(a) / get(b) for a, b in zip(times[slow], times[fast])]
    return {"median_ratio": statistics.median(per_round), "ratio_of_medians": median_of(times[slow], what)
            / median_of(times[fast], what), "per_round": per_round}
