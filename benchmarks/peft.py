"""Full fine-tuning vs LoRA vs SpIEL on one backbone: trainable params, memory, step time.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/peft.py [--d-model 256 --n-layer 4 --steps 12]

LoRA (rank r on every block linear) and SpIEL get exactly the same trainable-parameter count. SpIEL variants:
spiel-ag (dense gradient accumulation in the window before each regrow), spiel-ag-cand (accumulation on 2·k
candidates only), spiel-ma (SM3 row/column statistics).
Each method runs in its own subprocess so peak RSS (ru_maxrss) is not shared; reported:
  trainable    parameters with requires_grad
  state MiB    trainable params + their grads + AdamW moments (+ SpIEL indices and growth statistics): the memory
               that grows with the method, computed from the tensors
  peak MiB     peak of all live torch CPU allocations (parameters, grads, optimizer state, activations,
               temporaries) over one full SpIEL cycle of 4 steps, from torch.profiler's memory timeline
  peak ΔRSS    peak resident memory during training minus resident memory before the first step (MiB;
               coarse: allocator caching included)
  step ms      median wall time of forward+backward+AdamW step (+ prune/regrow when due), after 2 warm-up steps
Writes benchmarks/results/peft.md when --write is given.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate", "up", "down"]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def train_step(model, opt, idx):
    loss = model(idx[:, :-1], targets=idx[:, 1:]).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def profiled_peak_mib(step, n: int) -> float:
    import tempfile
    import warnings

    import numpy as np
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        for _ in range(n):
            step()
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prof.export_memory_timeline(f"{d}/m.json", device="cpu")
        _, sizes = json.loads(Path(f"{d}/m.json").read_text())
    return float(np.asarray(sizes).sum(1).max()) / 2**20


def run_one(method: str, a) -> dict:
    import torch

    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder
    from lmlab.nn.peft import apply_peft
    from lmlab.nn.peft.lora import find_linears

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=a.vocab, d_model=a.d_model, n_layer=a.n_layer, n_head=a.n_head,
                                max_seq_len=a.seq))
    budget = sum(a.rank * (model.get_submodule(n).in_features + model.get_submodule(n).out_features)
                 for n in find_linears(model, LINEARS))
    h = None
    if method == "lora":
        h = apply_peft(model, {"method": "lora", "r": a.rank, "alpha": 2 * a.rank, "target_modules": LINEARS})
    elif method.startswith("spiel"):
        h = apply_peft(model, {"method": "spiel", "n_trainable": budget, "target_modules": LINEARS,
                               "regrow": method.split("-")[1], "update_interval": 4, "accumulation_steps": 2,
                               "drop_fraction": 0.1, "candidates": 2.0 if method.endswith("-cand") else None})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, foreach=False)
    idx = torch.randint(0, a.vocab, (a.batch, a.seq + 1))
    rss0 = rss_mib()
    times = []
    for s in range(a.steps):
        t = time.perf_counter()
        loss = train_step(model, opt, idx)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    prof_peak = profiled_peak_mib(lambda: train_step(model, opt, idx), 4)
    n_train = sum(p.numel() for p in params)
    state = sum(p.numel() * p.element_size() * 2 for p in params)  # params + grads
    state += sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    if h is not None and h.spiel is not None:
        state += sum(l.indices.numel() * l.indices.element_size() for l in h.spiel.layers.values())
        state += sum(v.numel() * v.element_size() for st in h.spiel._stats.values() for v in st.values())
    return {"method": method, "trainable": n_train, "total": sum(p.numel() for p in model.parameters()),
            "budget": budget, "state_mib": state / 2**20, "peak_mib": prof_peak, "peak_delta_rss_mib": max(peak - rss0, 0.0),
            "step_ms": 1000 * statistics.median(times[2:]), "loss": float(loss)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--write", action="store_true")
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a)))
        return
    rows = []
    for m in ["full", "lora", "spiel-ag", "spiel-ag-cand", "spiel-ma"]:
        args = [sys.executable, __file__, "--one", m] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
                                                          if k not in ("one", "write")]
        out = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode:
            sys.exit(f"{m} failed: {out.stderr.strip().splitlines()[-1]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    head = (f"Backbone: lmlab Decoder d_model={a.d_model}, n_layer={a.n_layer}, vocab={a.vocab}, "
            f"{rows[0]['total']:,} params; batch {a.batch}×{a.seq} tokens; LoRA r={a.rank} on {', '.join(LINEARS)}; "
            f"SpIEL on the same linears with LoRA's budget ({rows[0]['budget']:,}). "
            f"Machine: {platform.machine()} {platform.processor() or ''} CPU, 1 thread, torch fp32; "
            f"median of {a.steps - 2} steps.")
    lines = ["| method | trainable params | % of model | state MiB (params+grads+Adam+indices) | peak MiB (profiler) | peak ΔRSS MiB | step ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f} | "
                     f"{r['state_mib']:.2f} | {r['peak_mib']:.1f} | {r['peak_delta_rss_mib']:.1f} | {r['step_ms']:.1f} |")
    text = head + "\n\n" + "\n".join(lines)
    print(text)
    if a.write:
        out = Path(__file__).parent / "results" / "peft.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text("# PEFT benchmark: full FT vs LoRA vs SpIEL\n\n`PYTHONPATH=. OMP_NUM_THREADS=1 python "
                       "benchmarks/peft.py --write`\n\n" + text + "\n")


if __name__ == "__main__":
    main()
