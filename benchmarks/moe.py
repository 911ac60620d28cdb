"""MoE layer step time (forward + backward) vs a dense SwiGLU with the same active parameters, and vs the
naive token loop / a loop over experts.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/moe.py [--quick] [--out benchmarks/results/moe.md]

Dense baseline: SwiGLU of hidden k·h (= the FLOPs of the k active experts). MoE: router + dispatch (padded
slot table with a fixed capacity, packed per-expert segments when dropless) + e experts of hidden h. Ratios > 1
mean the MoE layer is slower. Times are process CPU time (time.process_time, 1 torch thread), so other jobs on a
shared machine slow a step only through contention, not through time slices. Minor page faults per step are
counted too: glibc returns freed heap to the OS and the next step faults it back in (~µs per 4 KiB page), a
cost that depends on the process's allocation history rather than on the layer; `--keep-heap` stops glibc
from trimming and from mmap-ing large blocks (mallopt, same for every arm) to measure the layers without it.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import resource
import statistics
import time

import torch

from lmlab.config import ModelConfig
from lmlab.nn.ffn import SwiGLU
from lmlab.nn.moe.experts import loop_dispatch_combine
from lmlab.nn.moe.layer import MoE


FAULTS: dict[str, list[int]] = {}


def _once(fn, x, key: str | None = None) -> float:
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.process_time()
    fn(x).square().mean().backward()
    dt = time.process_time() - t0
    if key is not None:
        FAULTS.setdefault(key, []).append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return dt


def interleaved(fns: dict, x, reps: int, warmup: int = 2) -> dict[str, float]:
    """Median CPU time per step per function, measured round-robin so load drift on a shared machine hits all
    alike; minor page faults per step are recorded in FAULTS[name]."""
    for _ in range(warmup):
        for fn in fns.values():
            _once(fn, x)
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(_once(fn, x, k))
    return {k: statistics.median(v) for k, v in times.items()}


def keep_heap() -> None:
    """glibc: never trim the heap top, never mmap blocks under 32 MiB (so freed memory is reused, not refaulted)."""
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) and libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    except (OSError, AttributeError):
        ok = False
    if not ok:
        raise SystemExit("--keep-heap needs glibc's mallopt")


def bench(d: int, h: int, e: int, k: int, tokens: int, router: str, cf, reps: int, naive_tokens: int):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=d, n_head=1, d_ff=h, n_layer=2)
    moe = MoE.from_config(cfg, router=router, n_experts=e, top_k=k, capacity_factor=cf, group="batch")
    dense = SwiGLU.from_config(cfg, d_ff=k * h)
    x = torch.randn(1, tokens, d, requires_grad=True)

    def expert_loop(xx):
        xg = xx.reshape(1, -1, d)
        return loop_dispatch_combine(xg, moe.router(xg), moe.experts)

    FAULTS.clear()
    t = interleaved({"moe": moe, "dense": dense, "loop": expert_loop}, x, reps)
    xs = x[:, :naive_tokens].detach().requires_grad_(True)
    small = interleaved({"naive": moe.naive_forward, "fast": moe}, xs, 1, warmup=1)
    return {"d": d, "h": h, "e": e, "k": k, "tokens": tokens, "router": router, "cf": cf,
            "moe_ms": 1e3 * t["moe"], "dense_ms": 1e3 * t["dense"], "expert_loop_ms": 1e3 * t["loop"],
            "vs_dense": t["moe"] / t["dense"], "loop_vs_fast": t["loop"] / t["moe"],
            "naive_tokens": naive_tokens, "naive_ms": 1e3 * small["naive"], "fast_small_ms": 1e3 * small["fast"],
            "naive_speedup": small["naive"] / small["fast"],
            "moe_faults": statistics.median(FAULTS["moe"]), "dense_faults": statistics.median(FAULTS["dense"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep-heap", action="store_true", help="mallopt: no heap trimming / mmap under 32 MiB")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.keep_heap:
        keep_heap()
    sizes = [(128, 256, 8, 2, 2048), (256, 512, 8, 2, 2048), (256, 256, 16, 4, 4096), (512, 1024, 8, 1, 2048)]
    routers = [("topk_softmax_tc", 1.0), ("topk_softmax_tc", None), ("softmax_ec", None)]
    if a.quick:
        sizes, routers = sizes[:1], routers[:1]
    rows, load0 = [], os.getloadavg()[0]
    for d, h, e, k, t in sizes:
        for router, cf in routers:
            r = bench(d, h, e, k, t, router, cf, reps=3 if a.quick else 7, naive_tokens=64)
            rows.append(r)
            print(f"d={d} h={h} e={e} k={k} tokens={t} {router} cf={cf}: moe {r['moe_ms']:.1f} ms, "
                  f"dense(k·h) {r['dense_ms']:.1f} ms -> {r['vs_dense']:.2f}x dense; expert loop "
                  f"{r['loop_vs_fast']:.2f}x slower than fast; naive token loop ({r['naive_tokens']} tok) "
                  f"{r['naive_speedup']:.0f}x slower; page faults/step moe {r['moe_faults']:.0f} dense "
                  f"{r['dense_faults']:.0f}", flush=True)
    if a.out:
        heap = ("`--keep-heap` (glibc neither trims the heap nor mmaps blocks < 32 MiB)" if a.keep_heap
                else "default glibc malloc")
        lines = ["# MoE layer benchmark (forward + backward, CPU fp32, 1 thread)", "",
                 f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, load average "
                 f"{load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (shared machine); {heap}. "
                 "Process CPU time per forward+backward step, medians of round-robin repeats. "
                 "Dense = SwiGLU with hidden k·h (equal active parameters). `expert loop` = Python loop over "
                 "experts with gathered rows; `naive` = token loop over the dense D/C tensors (timed on the "
                 "first 64 tokens against the fast path on the same 64 tokens). Faults = median minor page faults "
                 "per step.", "",
                 "| d | h | e | k | tokens | router | cf | MoE ms | dense ms | MoE/dense | expert-loop/fast | naive/fast "
                 "| faults MoE / dense |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['d']} | {r['h']} | {r['e']} | {r['k']} | {r['tokens']} | {r['router']} | {r['cf']} | "
                         f"{r['moe_ms']:.1f} | {r['dense_ms']:.1f} | {r['vs_dense']:.2f} | {r['loop_vs_fast']:.2f} | "
                         f"{r['naive_speedup']:.0f} | {r['moe_faults']:.0f} / {r['dense_faults']:.0f} |")
        open(a.out, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
