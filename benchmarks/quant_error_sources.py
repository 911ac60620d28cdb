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
    int8 g32 [sym]     lmlab.nn.quant's int8 with input groups of 32 (a step r[n]·c[j] per block, centred on
                       per-block zero points; "sym": no zero points), in exact fp32 math; r, c fitted from the
                       least-squares start (`fit_row_col_steps(init="lsq")`, the default)
    int8 g32 row-init [sym]   the same from the per-row start (init="row": no block coarser than per-row)
    int8 per-block [sym]   every 32-wide block its own int8 grid (step = its half-range / 127, centred; "sym":
                       its max |w| / 127): the ceiling of any int8 grid per (row, block), which one
                       `_weight_int8pack_mm` call cannot carry
Every weight arm also reports its relative weight error ‖W − W_Q4_1‖ / ‖W_Q4_1‖ over all block linears, and the
run reports how much the Q4_1 blocks' ranges vary within a row (what a per-input-group grid can exploit).
Accuracy only (no timing), deterministic.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))
from benchmarks.quant_accuracy import finish, prompts  # noqa: E402


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


def per_block(w: torch.Tensor, zero: bool, g: int = 32) -> torch.Tensor:
    """Each g-wide block of each row on its own int8 grid, dequantised: centred on (max + min) / 2 with step
    half-range / 127 (zero=True), or symmetric with step max |w| / 127."""
    wb = w.reshape(w.shape[0], -1, g)
    z = (wb.amax(-1, keepdim=True) + wb.amin(-1, keepdim=True)) / 2 if zero else torch.zeros_like(wb[..., :1])
    s = ((wb - z).abs().amax(-1, keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    return (((wb - z) / s).round().clamp(-127, 127) * s + z).reshape(w.shape)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--arms", nargs="+", default=None, metavar="ARM", help="run only these arms; default: all")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from lmlab.backend import GenerationConfig
    from lmlab.infer.engine import Engine
    from lmlab.models.gguf_quant import load_gguf_quantized
    from lmlab.models.hf import load_pretrained
    from lmlab.nn.quant import Int4Linear, naive_int8_grouped_weight, quantize_int8_grouped_weight, unpack_int4

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
    coarser = {}   # g32 arms: the fraction of blocks whose step exceeds the per-row grid's (same centring)
    for zp, tag in ((True, ""), (False, " sym")):
        for init, itag in (("lsq", ""), ("row", " row-init")):
            ws, n_coarse, n_blocks = {}, 0, 0
            for n, w in exact.items():
                q, r, c, z = quantize_int8_grouped_weight(w, 32, zp, init=init)
                ws[n] = naive_int8_grouped_weight(q, r, c, z, 32).float()
                wb = w.reshape(w.shape[0], -1, 32)
                half = (wb.amax(-1) - wb.amin(-1)) / 2 if zp else wb.abs().amax(-1)
                n_coarse += (r[:, None] * c[None] > half.amax(1, keepdim=True) / 127 * (1 + 1e-6)).sum().item()
                n_blocks += half.numel()
            arms[f"int8 g32{itag}{tag}"] = (ws, False, False)
            coarser[f"int8 g32{itag}{tag}"] = n_coarse / n_blocks
        arms[f"int8 per-block{tag}"] = ({n: per_block(w, zp) for n, w in exact.items()}, False, False)
    if a.arms:
        unknown = sorted(set(a.arms) - set(arms))
        if unknown:
            raise SystemExit(f"--arms: unknown arm {unknown[0]!r}; known: {', '.join(arms)}")
        arms = {n: v for n, v in arms.items() if n in a.arms}

    # spread of the blocks' half-ranges within each row: row max / block, over every block of every block linear
    spread = torch.cat([(lambda h: (h.amax(1, keepdim=True) / h.clamp_min(1e-30)).flatten())(
        (w.reshape(w.shape[0], -1, 32).amax(-1) - w.reshape(w.shape[0], -1, 32).amin(-1)) / 2) for w in exact.values()])
    qs = torch.quantile(spread[torch.randperm(len(spread), generator=torch.Generator().manual_seed(0))[:1_000_000]],
                        torch.tensor([0.1, 0.5, 0.9], dtype=spread.dtype))
    print(f"row-max / block half-range over {len(spread)} Q4_1 blocks: 10 % {qs[0]:.2f}, median {qs[1]:.2f}, "
          f"90 % {qs[2]:.2f}, mean {spread.mean():.2f}")

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
    res: dict = {"load_avg_start": [round(x, 2) for x in load0], "prompts": len(ps), "new_tokens": 32,
                 "block_half_range_spread": {"blocks": len(spread), "p10": qs[0].item(), "median": qs[1].item(),
                                             "p90": qs[2].item(), "mean": spread.mean().item()},
                 "arms": {}}
    print(f"{'arm':20s} {'identical':>9s} {'max|dlogit|':>11s} {'mean|dlogit|':>12s} {'rel w err':>9s}")
    w_norm = sum(w.double().pow(2).sum() for w in exact.values()).sqrt().item()
    for name, (weights, ri, ro) in arms.items():
        o, lg = run(arm(weights, ri, ro))
        d = torch.cat([(x - y).abs().flatten() for x, y in zip(lg, ref_l)])
        r = res["arms"][name] = {"identical": sum(x == y for x, y in zip(o, ref_o)) / len(o),
                                 "max_logit_err": d.max().item(), "mean_logit_err": d.mean().item(),
                                 "rel_weight_err": sum((weights[n].double() - exact[n].double()).pow(2).sum()
                                                       for n in exact).sqrt().item() / w_norm}
        if name in coarser:
            r["blocks_coarser_than_per_row"] = coarser[name]
        print(f"{name:20s} {r['identical']:9.0%} {r['max_logit_err']:11.3f} {r['mean_logit_err']:12.4f} "
              f"{r['rel_weight_err']:9.2e}"
              + (f"  blocks coarser than per-row: {coarser[name]:.1%}" if name in coarser else ""), flush=True)
    return finish(res, a.out)


if __name__ == "__main__":
    main()
