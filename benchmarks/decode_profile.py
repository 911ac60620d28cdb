"""Where a decode call of lmlab's engine spends its CPU time: torch.profiler over one `generate_ids` call of a
benchmarks/peers.py workload, on SmolLM2-135M-Instruct, fp32 or weight-only int8/int4/bf16, one thread, on the
fused engine that `lmlab generate/serve` run (`--engine modules`: the module-path Engine).

    PYTHONPATH=. python benchmarks/decode_profile.py --quantize int4 --workload a     # batch 1, 128 new tokens
    PYTHONPATH=. python benchmarks/decode_profile.py --quantize int4 --workload b     # 16 samples of a 700-token prompt

Prints the process CPU seconds of the call, the share of that time inside the operators that read the weights
(the packed int8/int4 kernels, float matmuls: bf16 weights, the LM head, any unquantized linear), inside
attention (the fused SDPA kernel, Hydragen's batched matmuls), inside
every other aten operator, and the rest (Python, the engine's own bookkeeping, dispatch) = call CPU time minus the
operators' self CPU time. The workloads are benchmarks/peers.py's, built from its prompts (same token ids).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]   # benchmarks/peft.py would shadow `peft`
sys.path.insert(0, str(HERE.parent))
from lmlab.infer.cli import HEAD_DTYPES, head_dtype_for  # noqa: E402

GROUPS = {
    "weights: int4 kernel": ("_weight_int4pack_mm",),
    "weights: int8 kernel": ("_weight_int8pack_mm",),
    "weights: float matmul (bf16 weights, the head, unquantized)": ("aten::mm", "aten::addmm", "aten::linear",
                                                                    "aten::matmul", "mkldnn::_linear_pointwise"),
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax", "aten::bmm"),
}


def counted(name: str) -> bool:
    """An operator the shares count (aten, oneDNN, the weight-only kernels); the rest is Python and dispatch."""
    return name.startswith(("aten::", "mkldnn::")) or "weight_int" in name


def group_of(name: str) -> str:
    for g, keys in GROUPS.items():
        if any(k in name for k in keys):
            return g
    return "other aten ops"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantize", choices=["none", "int8", "int4", "bf16"], default="int4")
    ap.add_argument("--engine", choices=["fused", "modules"], default="fused",
                    help="lmlab.infer.fused.FusedEngine (what generate/serve run) or the module-path Engine")
    ap.add_argument("--head-dtype", choices=HEAD_DTYPES, default="auto",
                    help="the fused engine's LM head; auto: bfloat16 when quantized (as lmlab serve)")
    ap.add_argument("--workload", choices=["a", "b", "c"], default="a")
    ap.add_argument("--sizes", default="full", help="benchmarks/peers.py workload shapes (full, mid, small, quick)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=8, help="also list the N operators with the most self CPU time")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from benchmarks.peers import SIZES, build_workloads
    from lmlab.backend import GenerationConfig
    from lmlab.infer.fused import make_engine
    from lmlab.models.hf import load_pretrained

    model, tok = load_pretrained("smollm2")
    if a.quantize != "none":
        from lmlab.nn.quant import quantize_

        quantize_(model, a.quantize)
    head = head_dtype_for(a.head_dtype, a.quantize)
    eng = make_engine(model.eval(), tok, fused=a.engine == "fused", **({"head_dtype": head} if head else {}))
    eng.stop_ids = set()
    w = build_workloads(tok.encode, SIZES[a.sizes])[a.workload]
    gen = GenerationConfig(max_new_tokens=w["new"], n=w["n"], temperature=w["temperature"], seed=0)
    small = dict(w, new=4)
    eng.generate_ids(small["prompts"], GenerationConfig(max_new_tokens=4, n=w["n"], temperature=w["temperature"], seed=0))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        c0, t0 = time.process_time(), time.perf_counter()
        out = eng.generate_ids(w["prompts"], gen)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for row in out for c in row)
    shares: dict[str, float] = {}
    for e in prof.key_averages():
        if counted(e.key):
            g = group_of(e.key)
            shares[g] = shares.get(g, 0.0) + e.self_cpu_time_total / 1e6
    ops = sum(shares.values())
    shares["rest (Python, engine bookkeeping, dispatch)"] = max(0.0, cpu - ops)
    print(f"lmlab {a.quantize}, workload {a.workload} ({a.sizes}): {tokens} new tokens, {cpu:.2f} CPU-s, {wall:.2f} s wall "
          f"(under the profiler), {tokens / cpu:.1f} tokens per CPU-s, {a.threads} thread(s)")
    for g, s in sorted(shares.items(), key=lambda x: -x[1]):
        print(f"  {g:<46} {s:7.3f} s  {100 * s / cpu:5.1f} %")
    ev = sorted((e for e in prof.key_averages() if counted(e.key)),
                key=lambda e: -e.self_cpu_time_total)[:a.top]
    if ev:
        print(f"  top {len(ev)} operators by self CPU time (calls):")
    for e in ev:
        print(f"    {e.key:<44} {e.self_cpu_time_total / 1e6:7.3f} s  ({e.count} calls)")
    return {"cpu_s": cpu, "tokens": tokens, "shares": shares}


if __name__ == "__main__":
    main()
