"""Sampling cost of one decode step with top-p on SmolLM2's 49152-token vocabulary: the whole-vocabulary sort
(lmlab.infer.engine.top_p_sorted, what process_logits did before) vs partial selection (top_p_filter).

    python benchmarks/sampling.py                 # batch 1 and 16, top_p 0.9 and 0.95, 5 interleaved rounds
    python benchmarks/sampling.py --synthetic     # random LM-like logits instead of SmolLM2's
    python benchmarks/sampling.py --save-logits /tmp/smol_logits.pt   # then --logits /tmp/smol_logits.pt

The logits are SmolLM2-135M-Instruct's own next-token logits along a sampled story (one forward pass over
prompt + continuation; the rows cycle through its positions), so the candidate counts top-p needs are the
model's. Each side is `engine.sample` for a (batch, 49152) row block at temperature 0.8 — repetition penalty,
temperature, top-p, softmax and the inverse-CDF draw — with the top-p step swapped; one torch thread. Both
sides get the same rows and keep the same tokens (tests/test_top_p.py). Per side: the median over rounds of
the CPU time per step (the rounds interleave the sides), and the per-round ratio; the load average is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))
from benchmarks._interleave import interleaved, median_of, ratio  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def smollm2_logits(new_tokens: int = 96) -> torch.Tensor:
    """(positions, 49152) fp32 next-token logits of SmolLM2 along a sampled continuation of PROMPT."""
    from lmlab.backend import GenerationConfig
    from lmlab.infer.engine import Engine
    from lmlab.models.hf import load_pretrained

    model, tok = load_pretrained("smollm2")
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}]))
    out = Engine(model, tok).generate_ids([ids], GenerationConfig(max_new_tokens=new_tokens, temperature=0.8,
                                                                   top_p=0.95, seed=0))
    full = ids + out[0][0].token_ids
    with torch.no_grad():
        return model(torch.tensor([full])).logits[0, len(ids) - 1:].float()


def synthetic_logits(n: int = 96, v: int = 49152) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = -1.5 * torch.log(torch.arange(1, v + 1, dtype=torch.float32))   # Zipf(1.5): ~60 tokens hold 0.9
    return torch.stack([base[torch.randperm(v, generator=g)] for _ in range(n)])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40, help="decode steps (row blocks) timed per round and side")
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--logits", default=None, help="a (positions, 49152) tensor saved by --save-logits")
    ap.add_argument("--save-logits", default=None, help="save SmolLM2's logits here (torch.save)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    import lmlab.infer.engine as E
    from lmlab.backend import GenerationConfig

    load0 = os.getloadavg()[0]
    logits = synthetic_logits() if a.synthetic else torch.load(a.logits) if a.logits else smollm2_logits()
    if a.save_logits and not a.synthetic:
        torch.save(logits, a.save_logits)
    print(f"{'synthetic' if a.synthetic else 'SmolLM2'} logits {tuple(logits.shape)}; load average {load0:.1f} "
          f"({os.cpu_count()} CPUs)", flush=True)
    res = {"load_avg_start": load0, "rows": logits.shape[0]}
    for batch in (1, 16):
        blocks = [logits[torch.arange(i, i + batch) % logits.shape[0]] for i in range(0, a.steps * batch, batch)]
        for top_p in (0.9, 0.95):
            gen = GenerationConfig(temperature=0.8, top_p=top_p)
            kept = [int(torch.isfinite(E.top_p_filter(b / 0.8, top_p)).sum(-1).max()) for b in blocks]

            def side(filt):
                def run():
                    real = E.top_p_filter
                    E.top_p_filter = filt
                    try:
                        g = torch.Generator().manual_seed(0)
                        for b in blocks:
                            E.sample(b, gen, None, g)
                    finally:
                        E.top_p_filter = real
                return run

            times = interleaved({"sort": side(E.top_p_sorted), "partial": side(E.top_p_filter)}, reps=a.reps,
                                warmup=1, log=lambda s: None)
            per = {k: median_of(v) / len(blocks) * 1e3 for k, v in times.items()}
            r = ratio(times, "sort", "partial")["median_ratio"]
            res[f"b{batch}_p{top_p}"] = {**per, "speedup": r, "max_kept": max(kept)}
            print(f"batch {batch:2d}  top_p {top_p}: sort {per['sort']:7.2f} ms/step  partial {per['partial']:6.2f} "
                  f"ms/step  ×{r:.1f} (median of per-round ratios)  [largest kept set {max(kept)} tokens]",
                  flush=True)
    res["load_avg_end"] = os.getloadavg()[0]
    print(f"load average at end: {res['load_avg_end']:.1f}")
    return res


if __name__ == "__main__":
    main()
