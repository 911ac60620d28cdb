"""Where the quantized SmolLM2 arms' disagreement with fp32 comes from: each rounding applied alone, in fp32 math.

    PYTHONPATH=. python benchmarks/quant_error_sources.py [--out benchmarks/results/quant_error_sources.json]

Every arm is the fp32 model (the GGUF dequantised by transformers) with its block linears (not the head) replaced
by an emulation in fp32 nn.functional.linear of one error source of lmlab.nn.quant's kernels, measured like
benchmarks/quant_accuracy.py (same 20 prompts, 32 greedy tokens, EOS ignored, max / mean |Δlogit| over every
prompt position):
    int4 x→bf16        the Q4_1 weights exactly; the layer input rounded to bf16
    int4 y→bf16        the layer output rounded to bf16 (what the kernel returns)
    int4 scales→bf16   the kernel's scales and zeros ((q − 8)·d + (m + 8d)) rounded to bf16
    int4 bf16          all three: what Int4Linear(compute="bf16") computes, emulated
    int4 bf16x2        scales and output rounded, input exact: what compute="bf16x2" leaves
    int8 bits=B        per-output-row symmetric weights with 2^(B−1) − 1 levels a side (B = 8: quantize_'s int8),
                       in exact fp32 math: how fine a per-row grid these 4-bit weights need
Accuracy only (no timing), deterministic.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))
from benchmarks.quant_accuracy import prompts  # noqa: E402


def bf(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


class Emulated(torch.nn.Module):
    """y = out(x_in(x) @ wᵀ): a fixed fp32 weight, optional bf16 rounding of the input and of the output."""

    def __init__(self, w: torch.Tensor, round_in: bool, round_out: bool):
        super().__init__()
        self.w, self.round_in, self.round_out = w, round_in, round_out

    def forward(self, x):
        y = F.linear(bf(x) if self.round_in else x, self.w)
        return bf(y) if self.round_out else y


def per_row(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-row quantization with 2^(bits−1) − 1 levels a side, dequantised (bits=8: int8)."""
    lv = 2 ** (bits - 1) - 1
    s = (w.abs().amax(1) / lv).clamp_min(torch.finfo(torch.float32).tiny)
    return (w / s[:, None]).round().clamp(-lv, lv) * s[:, None]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from lmlab.backend import GenerationConfig
    from lmlab.infer.engine import Engine
    from lmlab.models.gguf_quant import load_gguf_quantized
    from lmlab.models.hf import load_pretrained
    from lmlab.nn.quant import Int4Linear, unpack_int4

    load0 = os.getloadavg()
    fp32, tok = load_pretrained("smollm2")
    int4, _ = load_gguf_quantized("smollm2", "int4")
    layers = {n: m for n, m in int4.named_modules() if isinstance(m, Int4Linear)}
    exact = {n: m.dequantize() for n, m in layers.items()}
    bf_scales = {}
    for n, m in layers.items():
        sz = bf(m.scales_and_zeros).repeat_interleave(m.group_size, dim=0)              # (k, n, 2)
        bf_scales[n] = (unpack_int4(m.qweight).float() - 8) * sz[..., 0].T + sz[..., 1].T

    def arm(weights: dict, round_in: bool, round_out: bool):
        m = copy.deepcopy(fp32)
        for n, w in weights.items():
            parent, _, attr = n.rpartition(".")
            setattr(m.get_submodule(parent), attr, Emulated(w, round_in, round_out))
        return m

    arms = {"int4 x→bf16": (exact, True, False), "int4 y→bf16": (exact, False, True),
            "int4 scales→bf16": (bf_scales, False, False), "int4 bf16": (bf_scales, True, True),
            "int4 bf16x2": (bf_scales, False, True)}
    for bits in (8, 9, 10, 11):
        arms[f"int8 bits={bits}"] = ({n: per_row(w, bits) for n, w in exact.items()}, False, False)

    ps = prompts(tok)
    gen = GenerationConfig(max_new_tokens=32)

    def run(m):
        eng = Engine(m, tok)
        eng.stop_ids = set()
        outs = [r[0].token_ids for r in eng.generate_ids(ps, gen)]
        with torch.no_grad():
            logits = [m(torch.tensor([p])).logits[0].float() for p in ps]
        return outs, logits

    ref_o, ref_l = run(fp32)
    res: dict = {"load_avg_start": [round(x, 2) for x in load0], "prompts": len(ps), "new_tokens": 32, "arms": {}}
    print(f"{'arm':18s} {'identical':>9s} {'max|dlogit|':>11s} {'mean|dlogit|':>12s}")
    for name, (weights, ri, ro) in arms.items():
        o, lg = run(arm(weights, ri, ro))
        d = torch.cat([(x - y).abs().flatten() for x, y in zip(lg, ref_l)])
        r = res["arms"][name] = {"identical": sum(x == y for x, y in zip(o, ref_o)) / len(o),
                                 "max_logit_err": d.max().item(), "mean_logit_err": d.mean().item()}
        print(f"{name:18s} {r['identical']:9.0%} {r['max_logit_err']:11.3f} {r['mean_logit_err']:12.4f}", flush=True)
    res["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average at start {res['load_avg_start']}, at end {res['load_avg_end']} (2 cores)")
    if a.out:
        from lmlab.io import atomic_write_text

        atomic_write_text(a.out, json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
