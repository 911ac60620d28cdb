"""MoE layer step time (forward + backward) vs a dense SwiGLU with the same active parameters, and vs the
naive token loop / a loop over experts.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/moe.py [--quick] [--out benchmarks/results/moe.md]

Dense baseline: SwiGLU of hidden k·h (= the FLOPs of the k active experts). MoE: router + slot-table dispatch
+ e experts of hidden h. Ratios > 1 mean the MoE layer is slower.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from lmlab.config import ModelConfig
from lmlab.nn.ffn import SwiGLU
from lmlab.nn.moe.experts import loop_dispatch_combine
from lmlab.nn.moe.layer import MoE


def _once(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x).square().mean().backward()
    return time.perf_counter() - t0


def interleaved(fns: dict, x, reps: int, warmup: int = 2) -> dict[str, float]:
    """Median step time per function, measured round-robin so load drift on a shared machine hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            _once(fn, x)
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(_once(fn, x))
    return {k: statistics.median(v) for k, v in times.items()}


def bench(d: int, h: int, e: int, k: int, tokens: int, router: str, cf, reps: int, naive_tokens: int):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=d, n_head=1, d_ff=h, n_layer=2)
    moe = MoE(cfg, router=router, n_experts=e, top_k=k, capacity_factor=cf, group="batch")
    dense = SwiGLU(cfg, d_ff=k * h)
    x = torch.randn(1, tokens, d, requires_grad=True)

    def expert_loop(xx):
        xg = xx.reshape(1, -1, d)
        return loop_dispatch_combine(xg, moe.router(xg), moe.experts)

    t = interleaved({"moe": moe, "dense": dense, "loop": expert_loop}, x, reps)
    xs = x[:, :naive_tokens].detach().requires_grad_(True)
    small = interleaved({"naive": moe.naive_forward, "fast": moe}, xs, 1, warmup=1)
    return {"d": d, "h": h, "e": e, "k": k, "tokens": tokens, "router": router, "cf": cf,
            "moe_ms": 1e3 * t["moe"], "dense_ms": 1e3 * t["dense"], "expert_loop_ms": 1e3 * t["loop"],
            "vs_dense": t["moe"] / t["dense"], "loop_vs_fast": t["loop"] / t["moe"],
            "naive_tokens": naive_tokens, "naive_ms": 1e3 * small["naive"], "fast_small_ms": 1e3 * small["fast"],
            "naive_speedup": small["naive"] / small["fast"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [(128, 256, 8, 2, 2048), (256, 512, 8, 2, 2048), (256, 256, 16, 4, 4096), (512, 1024, 8, 1, 2048)]
    routers = [("topk_softmax_tc", 1.0), ("topk_softmax_tc", None), ("softmax_ec", None)]
    if a.quick:
        sizes, routers = sizes[:1], routers[:1]
    rows = []
    for d, h, e, k, t in sizes:
        for router, cf in routers:
            r = bench(d, h, e, k, t, router, cf, reps=3 if a.quick else 7, naive_tokens=64)
            rows.append(r)
            print(f"d={d} h={h} e={e} k={k} tokens={t} {router} cf={cf}: moe {r['moe_ms']:.1f} ms, "
                  f"dense(k·h) {r['dense_ms']:.1f} ms -> {r['vs_dense']:.2f}x dense; expert loop "
                  f"{r['loop_vs_fast']:.2f}x slower than fast; naive token loop ({r['naive_tokens']} tok) "
                  f"{r['naive_speedup']:.0f}x slower", flush=True)
    if a.out:
        lines = ["# MoE layer benchmark (forward + backward, CPU fp32, 1 thread)", "",
                 f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, load average "
                 f"{os.getloadavg()[0]:.1f} at the end (shared machine; medians of round-robin repeats). "
                 "Dense = SwiGLU with hidden k·h (equal active parameters). `expert loop` = Python loop over "
                 "experts with gathered rows; `naive` = token loop over the dense D/C tensors (timed on the "
                 "first 64 tokens against the fast path on the same 64 tokens).", "",
                 "| d | h | e | k | tokens | router | cf | MoE ms | dense ms | MoE/dense | expert-loop/fast | naive/fast |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['d']} | {r['h']} | {r['e']} | {r['k']} | {r['tokens']} | {r['router']} | {r['cf']} | "
                         f"{r['moe_ms']:.1f} | {r['dense_ms']:.1f} | {r['vs_dense']:.2f} | {r['loop_vs_fast']:.2f} | "
                         f"{r['naive_speedup']:.0f} |")
        open(a.out, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
