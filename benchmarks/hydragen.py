"""Hydragen vs per-sequence KV copies: (a) the decode attention op, (b) end-to-end decode on SmolLM2.

    python benchmarks/hydragen.py --quick          # CPU subset, < 1 min
    python benchmarks/hydragen.py                  # batch {8,32,128} × prefix {256,1024,4096}
    python benchmarks/hydragen.py --e2e            # also SmolLM2 decode, Hydragen on vs off (interleaved)
    python benchmarks/hydragen.py --batches 256 --prefixes 4096   # on a GPU

(a) One decode step of attention with SmolLM2's head shape (9 query heads, 3 KV heads, d = 64), a shared
prefix of p tokens and a 64-token suffix per sequence. Naive: every sequence holds its own copy of the prefix
(the usual contiguous KV cache) and attends with F.scaled_dot_product_attention. Hydragen: prefix KV stored
once, all queries in one matmul, suffix per sequence, log-sum-exp merge (lmlab.nn.hydragen).
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
from benchmarks._interleave import interleaved, median_of, ratio  # noqa: E402
from lmlab.experiments.hydragen_speedup import D, H, KV, SUFFIX, op_case  # noqa: E402


def run_op(batches, prefixes, dev, dtype, reps=7, seed=0, log=print) -> list[dict]:
    rows = []
    for b in batches:
        for p in prefixes:
            r = op_case(b, p, dev, dtype, reps, seed)
            rows.append(r)
            log(f"b={b:<4d} p={p:<5d} naive {r['naive_ms']:8.3f} ms  hydragen {r['hydragen_ms']:8.3f} ms  "
                f"{r['speedup']:5.1f}x  (max |diff| {r['max_err']:.1e})")
    return rows


def run_e2e(n: int, prompt_tokens: int, new_tokens: int, reps: int = 5, log=print) -> dict:
    """Engine with Hydragen off vs on, interleaved: one warm-up each, then `reps` rounds; decode CPU time per
    step (one thread; see time_pair for why CPU time), median over rounds. Both prefill the shared prompt once
    (the engine always does); only the decode differs. The engine's gain over `transformers.generate`, which
    also prefills every copy of the prompt, is split into both factors by benchmarks/generate.py."""
    from lmlab.backend import GenerationConfig
    from lmlab.infer.engine import Engine
    from lmlab.models.hf import load_pretrained

    torch.set_num_threads(1)
    model, tok = load_pretrained("smollm2")
    eng = Engine(model, tok)
    eng.stop_ids = set()                                          # always decode new_tokens steps
    base = tok.encode("The history of the printing press begins in the fifteenth century. " * 64)
    prompt = base[:prompt_tokens]
    gen = GenerationConfig(max_new_tokens=new_tokens, n=n, temperature=1.0, seed=0)

    def side(on: bool):
        def run():
            eng.generate_ids([prompt], gen, hydragen=on)
            st = eng.last_stats
            return {"decode": st["decode_cpu_s"] / st["decode_steps"], "prefill": st["prefill_cpu_s"]}
        return run

    times = interleaved({"off": side(False), "on": side(True)}, reps=reps, warmup=1, log=lambda s: None)
    on, off = median_of(times["on"], "decode"), median_of(times["off"], "decode")
    sp = ratio(times, "off", "on", "decode")["median_ratio"]
    log(f"SmolLM2 decode, {n} samples × {prompt_tokens}-token shared prompt, {reps} interleaved rounds: hydragen off "
        f"{off * 1e3:.1f} CPU-ms/step, on {on * 1e3:.1f} CPU-ms/step, {sp:.2f}x (median of per-round ratios); "
        f"prefill once {median_of(times['on'], 'prefill'):.2f} CPU-s", flush=True)
    return {"n": n, "prompt_tokens": prompt_tokens, "reps": reps, "off_ms_per_step": off * 1e3,
            "on_ms_per_step": on * 1e3, "speedup": sp}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU subset in under a minute")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--prefixes", type=int, nargs="+", default=None)
    ap.add_argument("--e2e", action="store_true", help="also SmolLM2 end-to-end decode, Hydragen on vs off")
    ap.add_argument("--e2e-only", action="store_true")
    ap.add_argument("--e2e-n", type=int, default=32)
    ap.add_argument("--e2e-prompt", type=int, default=1024)
    ap.add_argument("--e2e-new", type=int, default=16)
    ap.add_argument("--e2e-reps", type=int, default=5, help="interleaved on/off rounds (≥ 5 for a figure)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) | bfloat16 (GPU default)")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    batches = a.batches or ([8, 32] if a.quick else [8, 32, 128])
    prefixes = a.prefixes or ([256, 1024] if a.quick else [256, 1024, 4096])
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"{dtype}, heads {H}/{KV}, d {D}, suffix {SUFFIX}")
    if not a.e2e_only:
        run_op(batches, prefixes, dev, dtype)
    if a.e2e or a.e2e_only:
        run_e2e(a.e2e_n, a.e2e_prompt, a.e2e_new, a.e2e_reps)


if __name__ == "__main__":
    main()
