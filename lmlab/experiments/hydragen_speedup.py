"""Hydragen (Juravsky et al., 2024): the decode-attention speedup over per-sequence prefix copies grows with
batch size and with prefix length.

Measured: one decode step of attention with SmolLM2's head shape (9 query / 3 KV heads, d = 64, 64 suffix
tokens per sequence). Naive = every sequence holds its own copy of the shared prefix and attends with
F.scaled_dot_product_attention (the usual contiguous KV cache); Hydragen = lmlab.nn.hydragen (prefix stored
once, all queries in one matmul, suffix per sequence, log-sum-exp merge). Both compute the same numbers
(max |diff| is recorded).

Arms: "batch" sweeps the batch at a fixed prefix, "prefix" sweeps the prefix at a fixed batch; each seed
re-draws the tensors and re-times every point (calls interleaved so both paths see the same machine load).
Verdict: for each sweep, least-squares slope of log(speedup) against log2(x) over all seeds' points
(`trend_verdict`: one-sided t-test of the slope, n − 2 degrees of freedom, α = 0.05); the two sweeps combined
with how="all": reproduced when both slopes are significantly > 0, not reproduced when either is significantly
< 0, inconclusive otherwise.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from lmlab.experiments.base import (HEADLINE_SEEDS, INCONCLUSIVE, ArmResult, Experiment, Verdict, combine, mean_std,
                                    trend_verdict)
from lmlab.registry import EXPERIMENTS

H, KV, D, SUFFIX = 9, 3, 64, 64

SWEEPS = {  # scale -> arm -> (fixed, swept values)
    "quick": {"batch": (1024, [4, 16, 64]), "prefix": (16, [256, 1024, 4096])},
    "full": {"batch": (4096, [8, 32, 128, 256]), "prefix": (128, [512, 2048, 8192, 16384])},
}


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


_FLUSH = None


def _evict_caches(dev) -> None:
    """Overwrite a buffer larger than the CPU's last-level cache, as the rest of a model's forward would
    between two attention calls (otherwise a small KV cache is timed from cache, a large one from memory)."""
    global _FLUSH
    import torch

    if dev.type == "cpu":
        if _FLUSH is None:
            _FLUSH = torch.empty(16 << 20, dtype=torch.float32)   # 64 MiB
        _FLUSH.add_(1.0)


def time_pair(f1, f2, dev, reps: int = 7, min_time: float = 0.2) -> tuple[float, float]:
    """Median seconds per call of f1 and f2, calls interleaved so both see the same machine state.

    On CPU the clock is the calling thread's CPU time (time.thread_time; torch runs single-threaded here),
    so time spent preempted by other jobs on a shared machine is not counted; on GPU, wall time after
    synchronising. Caches are evicted before every call."""
    clock = time.perf_counter if dev.type == "cuda" else time.thread_time
    f1(), f2()
    _sync(dev)
    t1, t2 = [], []
    t_end = time.perf_counter() + min_time
    while len(t1) < reps or (time.perf_counter() < t_end and len(t1) < 50 * reps):
        for f, ts in ((f1, t1), (f2, t2)):
            _evict_caches(dev)
            t0 = clock()
            f()
            _sync(dev)
            ts.append(clock() - t0)
    return statistics.median(t1), statistics.median(t2)


def op_case(b: int, p: int, dev=None, dtype=None, reps: int = 7, seed: int = 0) -> dict:
    """Time one decode step of attention: naive (prefix copied per sequence, SDPA) vs Hydragen."""
    import torch
    import torch.nn.functional as F

    from lmlab.nn.hydragen import PrefixLevel, hydragen_attention

    dev = torch.device(dev or "cpu")
    dtype = dtype or torch.float32
    if dev.type == "cpu":
        torch.set_num_threads(1)  # thread_time measures one thread
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(b, H, 1, D, generator=g).to(dev, dtype)
    k0, v0 = (torch.randn(1, KV, p, D, generator=g).to(dev, dtype) for _ in range(2))
    ks, vs = (torch.randn(b, KV, SUFFIX, D, generator=g).to(dev, dtype) for _ in range(2))
    kd = torch.cat([k0.expand(b, -1, -1, -1), ks], 2).contiguous()     # (b, k, p+s, d): one copy per sequence
    vd = torch.cat([v0.expand(b, -1, -1, -1), vs], 2).contiguous()
    level = [PrefixLevel(k0, v0, torch.zeros(b, dtype=torch.long, device=dev))]
    with torch.no_grad():
        naive = lambda: F.scaled_dot_product_attention(q, kd, vd, enable_gqa=True)  # noqa: E731
        hyd = lambda: hydragen_attention(q, level, ks, vs)  # noqa: E731
        err = (naive().float() - hyd().float()).abs().max().item()
        tn, th = time_pair(naive, hyd, dev, reps)
    return {"b": b, "p": p, "naive_ms": tn * 1e3, "hydragen_ms": th * 1e3, "speedup": tn / th, "max_err": err}


def run_arm(arm: str, seed: int, scale: str, out_dir: Path) -> ArmResult:
    import torch

    dev = "cuda" if scale == "full" and torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    fixed, xs = SWEEPS[scale][arm]
    rows = []
    for x in xs:
        b, p = (x, fixed) if arm == "batch" else (fixed, x)
        rows.append(op_case(b, p, dev, dtype, seed=seed))
    metrics = {f"speedup_{arm[0]}{x}": r["speedup"] for x, r in zip(xs, rows)}
    metrics["speedup_max"] = rows[-1]["speedup"]
    metrics["max_err"] = max(r["max_err"] for r in rows)
    curve = [(float(x), r["speedup"]) for x, r in zip(xs, rows)]
    return ArmResult(metrics=metrics, curves={f"speedup_vs_{arm}": curve},
                     info={"rows": rows, "device": dev, "dtype": str(dtype), "fixed": fixed})


def verdict(exp: Experiment, results: dict[str, list[ArmResult]]) -> Verdict:
    parts, extra = {}, {}
    for arm in ("batch", "prefix"):
        runs = results.get(arm, [])
        if not runs:
            return Verdict(INCONCLUSIVE, f"arm {arm!r} has no runs")
        curves = [r.curves[f"speedup_vs_{arm}"] for r in runs]
        xs = [x for x, _ in curves[0]]
        ys = [[math.log(c[i][1]) for c in curves] for i in range(len(xs))]
        v = trend_verdict([math.log2(x) for x in xs], ys, "higher", f"log speedup vs log2 {arm}")
        parts[arm] = v
        extra[arm] = {"slope": v.extra.get("slope"), "se": v.extra.get("se"),
                      "speedup": {int(x): mean_std([math.exp(y) for y in yy]) for x, yy in zip(xs, ys)}}
    first = mean_std([r.curves["speedup_vs_batch"][0][1] for r in results["batch"]])
    last = mean_std([r.curves["speedup_vs_batch"][-1][1] for r in results["batch"]])
    v = combine(parts, "all", "speedup rises with batch and with prefix", first, last)
    v.extra = extra
    return v


EXPERIMENTS.register("hydragen", Experiment(
    name="hydragen", headline=True, seeds=HEADLINE_SEEDS,
    paper="Hydragen: High-Throughput LLM Inference with Shared Prefixes (Juravsky et al., 2024)",
    claim="Hydragen speedup grows with batch size and prefix length",
    metric="speedup_max", direction="higher", baseline="batch", technique="prefix",
    arms=["batch", "prefix"], run=run_arm, verdict=verdict,
    plots=["speedup_vs_batch", "speedup_vs_prefix"],
    description="decode attention time, prefix copied per sequence (SDPA) / Hydragen; sweeps of batch and prefix",
))
