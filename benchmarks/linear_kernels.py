"""The kernels behind one SmolLM2 decode step, on this CPU, one thread: each linear shape of a layer and the LM
head as torch.mm (the weight in its plain layout), as a packed oneDNN linear (lmlab.infer.fused.packed_linear:
the weight reordered once), and the head through the int8 kernel; in fp32, each shape also as a group-32 int8
layer in fp32 math (lmlab.nn.quant.Int8GroupLinear, lmlab's C kernel); plus the reductions the head's exact top
needs, over a (rows, 49152) logit matrix. Each side loops over one weight, so the layers' weights stay in cache:
these are kernel costs, not a decode step's memory traffic (benchmarks/quant_accuracy.py times whole steps).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/linear_kernels.py [--rows 1 16] [--reps 7]

Every side of a row runs once per round in rotating order (benchmarks/_interleave.py), each timed over a loop
of calls; the table gives the median ms per call and the packed/mm ratio, and checks that each packed result
equals torch.mm's (bit for bit in bf16, to rounding in fp32).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))
from benchmarks._interleave import interleaved, median_of  # noqa: E402

D, FF, V, QKV = 576, 1536, 49152, 960        # SmolLM2-135M: d_model, FFN width, vocabulary, q+k+v rows
SHAPES = {"qkv": (QKV, D), "o": (D, D), "gate_up": (2 * FF, D), "down": (D, FF), "head": (V, D)}


def per_call_ms(f, calls: int):
    def side():
        t = time.perf_counter()
        for _ in range(calls):
            f()
        return {"ms": (time.perf_counter() - t) / calls * 1e3}
    return side


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from lmlab.infer.fused import packed_linear
    from lmlab.nn.quant import Int8GroupLinear, Int8Linear

    torch.manual_seed(0)
    out: dict = {}
    print(f"{'rows':>4} {'linear':8} {'dtype':5} {'mm ms':>8} {'packed ms':>9} {'mm/packed':>9}  equal")
    for rows in a.rows:
        for name, (n, k) in SHAPES.items():
            calls = 20 if name == "head" else 200
            for dt in (torch.bfloat16, torch.float32):
                w = (torch.randn(n, k) * 0.05).to(dt)
                x = torch.randn(rows, k).to(dt)
                packed = packed_linear(w)
                if packed is None:
                    sys.exit("linear_kernels: this torch build has no oneDNN linear (packed_linear returned None)")
                same = torch.equal(packed(x), torch.mm(x, w.t())) if dt == torch.bfloat16 else \
                    torch.allclose(packed(x), torch.mm(x, w.t()), rtol=1e-5, atol=1e-5)
                sides = {"mm": per_call_ms(lambda: torch.mm(x, w.t()), calls),
                         "packed": per_call_ms(lambda: packed(x), calls)}
                lin = torch.nn.Linear(k, n, bias=False)
                with torch.no_grad():
                    lin.weight.copy_(w.float())
                if name == "head" and dt == torch.bfloat16:
                    i8 = Int8Linear.from_float(lin)
                    sides["int8"] = per_call_ms(lambda: i8(x), calls)
                if dt == torch.float32:
                    g8 = Int8GroupLinear.from_float(lin, 32)
                    sides["int8g"] = per_call_ms(lambda: g8(x), calls)
                t = interleaved(sides, reps=a.reps, warmup=1, log=lambda m: None)
                mm, pk = median_of(t["mm"], "ms"), median_of(t["packed"], "ms")
                key = f"{rows}/{name}/{str(dt).split('.')[-1]}"
                out[key] = {"mm_ms": mm, "packed_ms": pk, "equal": bool(same)}
                extra = ""
                for side in ("int8", "int8g"):
                    if side in t:
                        out[key][f"{side}_ms"] = median_of(t[side], "ms")
                        extra += f"   {side} kernel {out[key][f'{side}_ms']:.3f} ms"
                print(f"{rows:>4} {name:8} {str(dt).split('.')[-1][:5]:5} {mm:8.3f} {pk:9.3f} {mm / pk:8.2f}×  "
                      f"{'yes' if same else 'NO'}{extra}")
        y = torch.randn(rows, V)
        red = {"amax": lambda: y.amax(-1), "amin": lambda: y.amin(-1), "aminmax": lambda: torch.aminmax(y, dim=-1),
               "argmax": lambda: y.argmax(-1)}
        t = interleaved({k: per_call_ms(f, 50) for k, f in red.items()}, reps=a.reps, warmup=1, log=lambda m: None)
        out[f"{rows}/reductions"] = {k: median_of(v, "ms") for k, v in t.items()}
        print(f"{rows:>4} reductions over ({rows}, {V}) fp32: " +
              ", ".join(f"{k} {median_of(v, 'ms'):.3f} ms" for k, v in t.items()))
    return out


if __name__ == "__main__":
    main()
