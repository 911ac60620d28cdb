"""lmlab's engine vs `transformers.generate` on SmolLM2-135M-Instruct: n samples of one long prompt.

    python benchmarks/generate.py                 # 16 samples × ~700-token prompt × 64 new tokens
    python benchmarks/generate.py --n 8 --new 32  # smaller

Both sample (temperature 1) exactly `--new` tokens per sequence (EOS ignored), same weights (the GGUF
dequantised by transformers, mapped into lmlab's Decoder), one torch thread. Throughput is new tokens per
CPU-second of the process (time.process_time), because on a shared machine wall time mostly measures the
other jobs; wall time is printed too. transformers expands the prompt
n times and prefills every copy; the engine prefills the shared prompt once and decodes with Hydragen.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
    ap.add_argument("--skip-hf", action="store_true", help="only the lmlab engine")
    ap.add_argument("--no-hydragen-run", action="store_true", help="also time the engine with Hydragen off")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from lmlab.backend import GenerationConfig
    from lmlab.infer.engine import Engine
    from lmlab.models.hf import decoder_from_hf_model, load_hf

    hf, tok = load_hf("smollm2")
    model = decoder_from_hf_model(hf)
    ids = build_prompt(tok, a.prompt_tokens)
    total = a.n * a.new
    print(f"SmolLM2-135M fp32, {a.threads} thread(s): {a.n} samples of one {len(ids)}-token prompt, {a.new} new tokens each")

    eng = Engine(model, tok)
    eng.stop_ids = set()
    res = {}
    for hyd in ((True, False) if a.no_hydragen_run else (True,)):
        t0, c0 = time.perf_counter(), time.process_time()
        out = eng.generate_ids([ids], GenerationConfig(max_new_tokens=a.new, n=a.n, temperature=1.0, seed=0),
                               hydragen=hyd)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert all(len(c.token_ids) == a.new for c in out[0])
        st = eng.last_stats
        name = "lmlab engine" + (" (hydragen)" if hyd else " (no hydragen)")
        res[name] = total / cpu
        print(f"{name:28s} CPU {cpu:7.2f} s  {total / cpu:7.1f} new tok/CPU-s  (wall {dt:.1f} s; prefill CPU "
              f"{st['prefill_cpu_s']:.2f} s, decode CPU {st['decode_cpu_s'] / max(st['decode_steps'], 1) * 1e3:.1f} ms/step)",
              flush=True)
    if not a.skip_hf:
        x = torch.tensor([ids])
        with torch.no_grad():
            t0, c0 = time.perf_counter(), time.process_time()
            o = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0, top_k=0,
                            top_p=1.0, num_return_sequences=a.n, max_new_tokens=a.new, min_new_tokens=a.new,
                            pad_token_id=tok.eos_id)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert o.shape == (a.n, len(ids) + a.new)
        res["transformers.generate"] = total / cpu
        print(f"{'transformers.generate':28s} CPU {cpu:7.2f} s  {total / cpu:7.1f} new tok/CPU-s  (wall {dt:.1f} s)")
        ratio = res["lmlab engine (hydragen)"] / res["transformers.generate"]
        print(f"ratio lmlab/transformers: {ratio:.1f}x")
        res["ratio"] = ratio
    return res


if __name__ == "__main__":
    main()
