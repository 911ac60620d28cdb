"""Weight-only int8/int4 SmolLM2-135M-Instruct against fp32: greedy agreement, logit error, perplexity, decode speed.

    PYTHONPATH=. python benchmarks/quant_accuracy.py [--reps 5] [--ppl-tokens 4096] [--out benchmarks/results/quant_accuracy.json]

Arms (same GGUF; the LM head is tied to the embedding and is 21 % of the weights):
    fp32               the GGUF dequantised by transformers (lmlab.models.hf.load_pretrained)
    int8               fp32 arm copied, every linear but the head per-channel int8 (quantize_), compute="bf16"
    int8 bf16x2        the same int8 weights, compute="bf16x2" (fp32 activations as two bf16 halves, lmlab.nn.quant)
    int8 w, fp32 math  accuracy only: the int8 arm's dequantised weights in fp32 nn.Linear layers, i.e. the int8
                       weights' own error without any bf16 rounding (not timed: it is the fp32 arm's speed)
    int8 g32 [bf16x2]  int8 with input groups of 32 (the Q4_1 block; quantize_(input_group_size=32)): the grid step of
                       block (n, j) is r[n]·c[j], c carried by the activation, plus folded per-block zero points
    int8 g32 w, fp32 math        accuracy only: that arm's dequantised weights in fp32 nn.Linear layers
    int8 g32 no zeros w, fp32 math   the same without the zero points (symmetric blocks, r[n]·c[j] only)
    int8 g32 row-init [w, fp32 math] r, c fitted from the per-row grid (fit_row_col_steps(init="row"): no block's
                       step coarser than per-row int8's; the default starts from a least-squares fit)
    int4               the Q4_1 blocks loaded straight into Int4Linear, group 32 (lmlab.models.gguf_quant); head fp32
    int4 bf16x2        the same int4 layers, compute="bf16x2"
    int4, int8 head    the int4 arm with the head (a copy of the tied embedding) quantized to per-channel int8
    int8g              group-wise int8 in fp32 math (Int8GroupLinear, lmlab.nn.cpu_kernels): the GGUF's Q4_1 and Q8_0
                       blocks loaded as they are (lmlab.models.gguf_quant), the head (the tied Q8_0 embedding) too
    int8g requantized  the fp32 arm copied and quantized by quantize_(scheme="int8g", skip=()): each group's own
                       min/max grid of 255 steps, head included (the quantizer, not the file's blocks)
    fused …            the same weights generated and timed by the fused engine (lmlab.infer.fused: one linear for
                       q/k/v and one for gate/up, activations kept in bf16 between the kernels); "bf16 head": the
                       engine's bf16 copy of the head with its top logits recomputed in fp32 (head_dtype=bf16, what
                       `lmlab serve --quantize` runs by default), its logit and perplexity columns through the same
                       head path (the bf16 logits, the top recomputed); "bf16" arms: every linear but the head a
                       BF16Linear

Accuracy: 20 prompts (facts, code, chat-template questions), 32-token greedy continuations (one batch, EOS
ignored, by the arm's engine): the fraction identical to fp32's and the first divergent position; max / mean
|logit − fp32 logit| over every prompt position (the model's own forward, also for fused arms); perplexity on held-out text (the validation split of lmlab.data.embedded's
bible_web and docs domains, 512-token windows). Speed: batch 1, 128 new greedy tokens, one torch thread,
`--reps` interleaved rounds (benchmarks/_interleave.py), median decode CPU-ms per step -> tokens/s.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))
from benchmarks._interleave import interleaved, median_of  # noqa: E402

PLAIN = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import numpy as np\n\ndef normalize(x):\n",
    "SELECT name, COUNT(*) FROM orders",
    "The theory of relativity was developed by",
    "Photosynthesis is the process by which plants",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
]
CHAT = [
    "What is the boiling point of water in Fahrenheit?",
    "Write a Python function that reverses a string.",
    "Give me three tips for better sleep.",
    "Who wrote Romeo and Juliet?",
    "Explain what a hash table is in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Name the planets of the solar system in order.",
    "How do I create a list in Python?",
    "What causes the seasons on Earth?",
]


def prompts(tok) -> list[list[int]]:
    chat = [tok.apply_chat_template([{"role": "user", "content": c}]) for c in CHAT]
    return [tok.encode(p) for p in PLAIN + chat]


def heldout_ids(tok, n_tokens: int) -> list[list[int]]:
    """512-token windows of the embedded corpus' validation text (bible_web and docs, alternating)."""
    from lmlab.data.embedded import embedded_texts

    texts = embedded_texts(["bible_web", "docs"])
    docs = [d for pair in zip(texts["bible_web"]["val"], texts["docs"]["val"]) for d in pair]
    ids: list[int] = []
    for d in docs:
        ids += tok.encode(d) + [tok.eos_id]
        if len(ids) >= n_tokens:
            break
    ids = ids[:n_tokens]
    return [ids[i:i + 512] for i in range(0, len(ids) - 1, 512) if len(ids[i:i + 512]) > 1]


@torch.no_grad()
def perplexity(model, windows: list[list[int]]) -> float:
    nll, n = 0.0, 0
    for w in windows:
        x = torch.tensor([w])
        logits = model(x[:, :-1]).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
        n += len(w) - 1
    return math.exp(nll / n)


def with_compute(model, compute: str):
    """A deep copy of `model` whose quantized layers run in `compute` mode (lmlab.nn.quant)."""
    from lmlab.nn.quant import Int4Linear, Int8Linear

    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, (Int8Linear, Int4Linear)):
            mod.compute = compute
    return m


def float_twin(model):
    """A copy of `model` with every quantized layer replaced by an fp32 nn.Linear holding its dequantised weight."""
    from lmlab.nn.quant import Int4Linear, Int8Linear

    m = copy.deepcopy(model)
    for name, mod in list(m.named_modules()):
        if isinstance(mod, (Int8Linear, Int4Linear)):
            lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(mod.dequantize())
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            parent, _, attr = name.rpartition(".")
            setattr(m.get_submodule(parent) if parent else m, attr, lin)
    return m


def engine_head(model, tok):
    """A copy of `model` whose head returns what the fused engine's bf16 head copy gives (lmlab.infer.fused: the
    bf16 logits with the top recomputed from the float head), and that engine (on `model`) itself."""
    from lmlab.infer.fused import FusedEngine

    eng = FusedEngine(model, tok, head_dtype=torch.bfloat16)
    m = copy.deepcopy(model)

    def hook(mod, inp, out):
        y = eng._refined_logits(inp[0].reshape(-1, inp[0].shape[-1]))
        return y.view(*inp[0].shape[:-1], -1).to(out.dtype)

    m.head.register_forward_hook(hook)
    return m, eng


def int8_groups_row_init(model):
    """A copy of `model` with its linears but the head as Int8Linear(input_group_size=32), r and c fitted from
    the per-row grid (quantize_int8_grouped_weight(init="row"))."""
    from lmlab.nn.quant import Int8Linear, quantize_int8_grouped_weight

    m = copy.deepcopy(model)
    for name, mod in list(m.named_modules()):
        if type(mod) is torch.nn.Linear and name != "head":
            q, r, c, z = quantize_int8_grouped_weight(mod.weight, 32, init="row")
            parent, _, attr = name.rpartition(".")
            setattr(m.get_submodule(parent) if parent else m, attr,
                    Int8Linear.from_qparams(q, r, bias=mod.bias, in_scales=c, zeros=z, input_group_size=32))
    return m


def finish(res: dict, out) -> dict:
    """Close a run: the load average at the end (printed beside the one at the start), the JSON written atomically."""
    res["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average at start {res['load_avg_start']}, at end {res['load_avg_end']} (2 cores)")
    if out:
        from lmlab.io import atomic_write_text

        atomic_write_text(out, json.dumps(res, indent=1))
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="interleaved speed rounds (≥ 5 for a reported figure)")
    ap.add_argument("--new", type=int, default=128, help="new tokens in the speed arm")
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                    help="run only these arms (and fp32, the reference); default: all")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from lmlab.backend import GenerationConfig
    from lmlab.infer.engine import Engine
    from lmlab.infer.fused import FusedEngine
    from lmlab.models.gguf_quant import load_gguf_quantized
    from lmlab.models.hf import load_pretrained
    from lmlab.nn.quant import quantize_

    load0 = os.getloadavg()
    t = time.perf_counter()
    fp32, tok = load_pretrained("smollm2")
    load_fp32 = time.perf_counter() - t
    t = time.perf_counter()
    int4, _ = load_gguf_quantized("smollm2", "int4")
    load_int4 = time.perf_counter() - t
    t = time.perf_counter()
    int8g, _ = load_gguf_quantized("smollm2", "int8g")
    load_int8g = time.perf_counter() - t
    int8 = quantize_(copy.deepcopy(fp32), "int8")
    int4h = copy.deepcopy(int4)
    int4h.head = copy.deepcopy(int4h.head)                 # untie: the embedding lookup stays fp32
    quantize_(int4h, "int8", skip=())                      # only the head is still an nn.Linear
    arms = {"fp32": fp32, "int8": int8, "int8 bf16x2": with_compute(int8, "bf16x2"),
            "int8 w, fp32 math": float_twin(int8), "int4": int4, "int4 bf16x2": with_compute(int4, "bf16x2"),
            "int4, int8 head": int4h}
    g32 = quantize_(copy.deepcopy(fp32), "int8", input_group_size=32)
    arms.update({"int8 g32": g32, "int8 g32 bf16x2": with_compute(g32, "bf16x2"),
                 "int8 g32 w, fp32 math": float_twin(g32),
                 "int8 g32 no zeros w, fp32 math": float_twin(
                     quantize_(copy.deepcopy(fp32), "int8", input_group_size=32, zero_points=False))})
    g32r = int8_groups_row_init(fp32)
    arms.update({"int8 g32 row-init": g32r, "int8 g32 row-init w, fp32 math": float_twin(g32r)})
    bf16 = quantize_(copy.deepcopy(fp32), "bf16")
    arms.update({"int8g": int8g, "fused int8g": int8g,
                 "int8g requantized": quantize_(copy.deepcopy(fp32), "int8g", skip=())})
    # a "bf16 head" arm is the fused engine with head_dtype=bf16 on the float-head model (a bf16 copy of the head
    # whose top logits it recomputes in fp32, lmlab.infer.fused); its logit and perplexity columns come from the
    # same head path (engine_head)
    heads = {"fused int8, bf16 head": int8, "fused int4, bf16 head": int4, "fused bf16, bf16 head": bf16}
    head_engines = {}
    arms.update({"fused fp32": fp32, "fused int8": int8, "fused int4": int4})
    for name, m in heads.items():
        if a.arms and name not in a.arms:
            continue
        arms[name], head_engines[name] = engine_head(m, tok)

    def engine(name: str, m):
        if name in head_engines:
            return head_engines[name]
        return FusedEngine(m, tok) if name.startswith("fused") else Engine(m, tok)
    if a.arms:
        unknown = sorted(set(a.arms) - set(arms))
        if unknown:
            raise SystemExit(f"--arms: unknown arm {unknown[0]!r}; known: {', '.join(arms)}")
        arms = {n: m for n, m in arms.items() if n == "fp32" or n in a.arms}
    untimed = {n for n in arms if n.endswith("fp32 math")}
    print(f"load (wall): fp32 via transformers {load_fp32:.1f} s, int4 direct from GGUF {load_int4:.1f} s, "
          f"int8g {load_int8g:.1f} s")

    # ---- accuracy
    ps = prompts(tok)
    gen = GenerationConfig(max_new_tokens=32)
    outs, logits = {}, {}
    for name, m in arms.items():
        eng = engine(name, m)
        eng.stop_ids = set()
        outs[name] = [r[0].token_ids for r in eng.generate_ids(ps, gen)]
        with torch.no_grad():
            logits[name] = [m(torch.tensor([p])).logits[0].float() for p in ps]
    windows = heldout_ids(tok, a.ppl_tokens)
    res: dict = {"load_avg_start": [round(x, 2) for x in load0], "prompts": len(ps), "new_tokens": 32,
                 "ppl_tokens": sum(len(w) for w in windows),
                 "load_s": {"fp32": load_fp32, "int4_direct": load_int4, "int8g_direct": load_int8g},
                 "arms": {}}
    ppl_fp32 = perplexity(fp32, windows)
    ppls = {id(fp32): ppl_fp32}
    print(f"\n{'arm':30s} {'identical':>9s} {'1st diff (median)':>17s} {'max|dlogit|':>11s} {'mean|dlogit|':>12s} "
          f"{'ppl':>7s} {'dppl':>7s}")
    for name, m in arms.items():
        same = [o == r for o, r in zip(outs[name], outs["fp32"])]
        first = [next((i for i, (x, y) in enumerate(zip(o, r)) if x != y), len(r))
                 for o, r in zip(outs[name], outs["fp32"])]
        d = torch.cat([(x - y).abs().flatten() for x, y in zip(logits[name], logits["fp32"])])
        if id(m) not in ppls:                              # a fused arm shares its weights' perplexity
            ppls[id(m)] = perplexity(m, windows)
        ppl = ppls[id(m)]
        res["arms"][name] = {"identical": sum(same) / len(same), "first_diff_median": sorted(first)[len(first) // 2],
                             "max_logit_err": d.max().item(), "mean_logit_err": d.mean().item(), "ppl": ppl,
                             "ppl_delta": ppl - ppl_fp32}
        r = res["arms"][name]
        print(f"{name:30s} {r['identical']:9.0%} {r['first_diff_median']:17d} {r['max_logit_err']:11.3f} "
              f"{r['mean_logit_err']:12.4f} {ppl:7.3f} {ppl - ppl_fp32:+7.3f}")

    # ---- speed: batch 1, a.new greedy tokens, interleaved
    prompt = ps[len(PLAIN)]                                 # a chat-template question
    engines = {}
    for name, m in arms.items():
        if name in untimed:
            continue
        engines[name] = engine(name, m)
        engines[name].stop_ids = set()

    def side(eng):
        def run():
            out = eng.generate_ids([prompt], GenerationConfig(max_new_tokens=a.new))
            assert len(out[0][0].token_ids) == a.new
            st = eng.last_stats
            return {"decode_ms": st["decode_cpu_s"] / max(st["decode_steps"], 1) * 1e3}
        return run

    times = interleaved({n: side(e) for n, e in engines.items()}, reps=a.reps, warmup=1)
    print(f"\nbatch 1, {len(prompt)}-token prompt, {a.new} new tokens, {a.threads} thread(s), {a.reps} rounds")
    print(f"{'arm':30s} {'decode CPU-ms/tok':>17s} {'tok/CPU-s':>9s} {'call CPU-s':>10s} {'vs fp32':>7s}")
    base = median_of(times["fp32"], "decode_ms")
    for name, ss in times.items():
        ms = median_of(ss, "decode_ms")
        res["arms"][name].update(decode_ms=ms, decode_tok_per_cpu_s=1e3 / ms, call_cpu_s=median_of(ss))
        print(f"{name:30s} {ms:17.1f} {1e3 / ms:9.1f} {median_of(ss):10.2f} {base / ms:6.2f}x")
    return finish(res, a.out)


if __name__ == "__main__":
    main()
