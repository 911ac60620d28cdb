"""lmlab's engine vs `transformers.generate` on SmolLM2-135M-Instruct: n samples of one long prompt.

    python benchmarks/generate.py                 # 16 samples × ~700-token prompt × 64 new tokens, 5 rounds
    python benchmarks/generate.py --n 4 --prompt-tokens 128 --new 8 --reps 5   # a quick check

Three sides, same weights (the GGUF dequantised by transformers, mapped into lmlab's Decoder), all sampling
(temperature 1) exactly `--new` tokens per sequence (EOS ignored), one torch thread:

    transformers.generate   expands the prompt n times and prefills every copy, then decodes
    engine, Hydragen off    prefills the shared prompt once, copies its KV into every sequence, plain decode
    engine, Hydragen on     prefills it once, decodes with Hydragen (prefix KV read once for all sequences)

so the engine's speedup splits into two factors whose product it is: prefill-once (generate → engine off)
and Hydragen decode (engine off → on). One warm-up call of each side, then `--reps` rounds (≥ 5) in which
every side runs once, the order rotating; each figure is the median over rounds of process CPU time (on a
shared machine wall time mostly measures the other jobs; it is printed too), and each ratio the median of the
per-round ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]   # benchmarks/peft.py would shadow `peft`
sys.path.insert(0, str(HERE.parent))
from benchmarks._interleave import interleaved, median_of, ratio  # noqa: E402

TEXT = ("Gutenberg's press combined movable metal type, oil-based ink and a screw press adapted from wine "
        "making. Within fifty years presses operated in more than two hundred European cities, and the price "
        "of books fell sharply, which changed how scholars, merchants and churches shared knowledge. ")


def build_prompt(tok, n_tokens: int) -> list[int]:
    body = TEXT * (n_tokens // 40 + 2)
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": body + "\nSummarise the text."}]))
    while len(ids) > n_tokens:   # trim the body until the templated prompt has the wanted length
        body = body[: int(len(body) * n_tokens / len(ids)) - 1]
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": body + "\nSummarise the text."}]))
    return ids


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=700)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds (≥ 5 for a reported figure)")
    ap.add_argument("--skip-hf", action="store_true", help="only the lmlab engine (Hydragen on vs off)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from lmlab.backend import GenerationConfig
    from lmlab.infer.engine import Engine
    from lmlab.models.hf import decoder_from_hf_model, load_hf

    hf, tok = load_hf("smollm2")
    model = decoder_from_hf_model(hf)
    ids = build_prompt(tok, a.prompt_tokens)
    total = a.n * a.new
    print(f"SmolLM2-135M fp32, {a.threads} thread(s): {a.n} samples of one {len(ids)}-token prompt, {a.new} new "
          f"tokens each; {a.reps} interleaved rounds after one warm-up")
    eng = Engine(model, tok)
    eng.stop_ids = set()
    seed = [0]

    def engine(hyd: bool):
        def run():
            seed[0] += 1
            out = eng.generate_ids([ids], GenerationConfig(max_new_tokens=a.new, n=a.n, temperature=1.0,
                                                           seed=seed[0]), hydragen=hyd)
            assert all(len(c.token_ids) == a.new for c in out[0])
            st = eng.last_stats
            return {"prefill_cpu": st["prefill_cpu_s"], "decode_cpu": st["decode_cpu_s"],
                    "decode_ms_per_step": st["decode_cpu_s"] / max(st["decode_steps"], 1) * 1e3}
        return run

    def generate():
        x = torch.tensor([ids])
        seed[0] += 1
        torch.manual_seed(seed[0])
        with torch.no_grad():
            o = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0, top_k=0,
                            top_p=1.0, num_return_sequences=a.n, max_new_tokens=a.new, min_new_tokens=a.new,
                            pad_token_id=tok.eos_id)
        assert o.shape == (a.n, len(ids) + a.new)

    sides = {"engine, Hydragen on": engine(True), "engine, Hydragen off": engine(False)}
    if not a.skip_hf:
        sides["transformers.generate"] = generate
    times = interleaved(sides, reps=a.reps, warmup=1)

    res: dict = {"n": a.n, "prompt_tokens": len(ids), "new": a.new, "reps": a.reps}
    print(f"\n{'':24s} {'median CPU s':>12s} {'new tok/CPU-s':>14s} {'wall s':>8s}")
    for name, ss in times.items():
        cpu = median_of(ss)
        res[name] = {"cpu_s": cpu, "tok_per_cpu_s": total / cpu, "wall_s": median_of(ss, "wall")}
        detail = ""
        if "prefill_cpu" in ss[0].extra:
            detail = (f"  (prefill {median_of(ss, 'prefill_cpu'):.2f} CPU-s, decode "
                      f"{median_of(ss, 'decode_ms_per_step'):.1f} CPU-ms/step)")
            res[name].update(prefill_cpu_s=median_of(ss, "prefill_cpu"),
                             decode_ms_per_step=median_of(ss, "decode_ms_per_step"))
        print(f"{name:24s} {cpu:12.2f} {total / cpu:14.1f} {median_of(ss, 'wall'):8.1f}{detail}")
    hyd = ratio(times, "engine, Hydragen off", "engine, Hydragen on")
    res["hydragen_on_vs_off"] = hyd["median_ratio"]
    print(f"\nHydragen decode (engine off -> on), whole call: {hyd['median_ratio']:.2f}x "
          f"(ratio of medians {hyd['ratio_of_medians']:.2f}x); decode step alone: "
          f"{ratio(times, 'engine, Hydragen off', 'engine, Hydragen on', 'decode_cpu')['median_ratio']:.2f}x")
    if not a.skip_hf:
        pre = ratio(times, "transformers.generate", "engine, Hydragen off")
        tot = ratio(times, "transformers.generate", "engine, Hydragen on")
        res.update(prefill_once_vs_generate=pre["median_ratio"], engine_vs_generate=tot["median_ratio"])
        print(f"prefill once (generate -> engine off):          {pre['median_ratio']:.2f}x "
              f"(ratio of medians {pre['ratio_of_medians']:.2f}x)")
        print(f"ratio lmlab engine / transformers.generate:     {tot['median_ratio']:.2f}x "
              f"(ratio of medians {tot['ratio_of_medians']:.2f}x; per round "
              + ", ".join(f"{r:.2f}" for r in tot["per_round"]) + f"; spread "
              f"{statistics.pstdev(tot['per_round']):.2f})")
    return res


if __name__ == "__main__":
    main()
