"""Where lmlab's decode step spends its time: torch.profiler over the decode phase of peers.py's workloads.

    PYTHONPATH=. .venv/bin/python benchmarks/peers/profile_lmlab.py [--threads 1] [--quantize int4] [--workloads a,c]

For workload a (batch 1) and workload c's decode (32 sequences sharing a 1K-token prompt), CPU self time by
operator class: weight matmuls (aten::mm/addmm/linear/matmul/bmm on the weights, and any quantized linear op),
attention (scaled_dot_product_attention and Hydragen's softmax merges), sampling (sort/topk/multinomial/
softmax over the vocabulary) and everything else (norms, RoPE, copies, the Python between ops). The share of
the step in weight matmuls tells whether the weight format (fp32 bytes read per token) or the Python/
framework overhead bounds decode.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

CLASSES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear", "aten::bmm", "aten::_weight_int",
               "aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm", "quantized::", "aten::_convert_weight"),
    "attention": ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product", "aten::logsumexp"),
    "sampling": ("aten::sort", "aten::topk", "aten::multinomial", "aten::argmax", "aten::softmax", "aten::_softmax",
                 "aten::cumsum"),
}


def classify(name: str) -> str:
    for cls, prefixes in CLASSES.items():
        if any(name.startswith(p) for p in prefixes):
            return cls
    return "other"


def profile_decode(eng, prompts, gen) -> dict:
    """Self CPU time by class over one generate call, minus its prefill (profiled separately)."""
    from torch.profiler import ProfilerActivity, profile

    eng.generate_ids(prompts, gen)                                       # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        eng.generate_ids(prompts, gen)
        wall = time.perf_counter() - t0
    by: dict[str, float] = {}
    for ev in prof.key_averages():
        by[classify(ev.key)] = by.get(classify(ev.key), 0.0) + ev.self_cpu_time_total / 1e6
    total = sum(by.values())
    st = eng.last_stats
    return {"wall_s": wall, "op_self_cpu_s": total, "share": {k: v / total for k, v in sorted(by.items())},
            "decode_ms_per_step_unprofiled": None, "steps": st.get("decode_steps"),
            "prefill_s": st.get("prefill_s"), "decode_s": st.get("decode_s")}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quantize", choices=["none", "int8", "int4"], default="none")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--workloads", default="a,c", help="which of peers.py's workloads to profile")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    from benchmarks.peers import FULL, PEERS_DIR, build_workloads
    from lmlab.backend import GenerationConfig
    from lmlab.infer.engine import Engine
    from lmlab.models.hf import load_pretrained

    tok = AutoTokenizer.from_pretrained(str(PEERS_DIR / "smollm2-hf"))
    w = build_workloads(lambda t: tok.encode(t, add_special_tokens=False), FULL)
    hf_dir = PEERS_DIR / "smollm2-hf"
    model, t = load_pretrained(str(hf_dir) if (hf_dir / "config.json").exists() else "smollm2")
    if a.quantize != "none":
        from lmlab.nn.quant import quantize_

        quantize_(model, a.quantize, group_size=32)
    eng = Engine(model, t)
    eng.stop_ids = set()
    out = {"threads": a.threads, "quantize": a.quantize, "new": a.new}
    for name in a.workloads.split(","):
        gen = GenerationConfig(max_new_tokens=a.new, n=w[name]["n"], temperature=0.0, seed=0)
        r = profile_decode(eng, w[name]["prompts"], gen)
        # the same call unprofiled: ms per decode step
        eng.generate_ids(w[name]["prompts"], gen)
        st = eng.last_stats
        r["decode_ms_per_step_unprofiled"] = st["decode_s"] / max(st["decode_steps"], 1) * 1e3
        out[name] = r
        sh = ", ".join(f"{k} {v:.0%}" for k, v in r["share"].items())
        print(f"workload {name} ({len(w[name]['prompts'])} sequence(s), {a.new} new): decode "
              f"{r['decode_ms_per_step_unprofiled']:.1f} ms/step unprofiled; op self-CPU shares: {sh}")
    if a.out:
        from lmlab.io import atomic_write_text

        atomic_write_text(a.out, json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
