"""Time the data pipeline from scratch: embedded corpus, BPE training, tokenize+pack, cache hits.

    python benchmarks/data_pipeline.py [--data-dir DIR] [--vocab-size 4096] [--seq-len 128]

Prints a markdown table (wall and CPU seconds per stage) and the corpus size per domain. Uses a fresh
temporary data dir unless --data-dir is given.
"""
from __future__ import annotations

import argparse
import tempfile
import time


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="lmlab-bench-")

    from lmlab.config import DataConfig
    from lmlab.data import embedded
    from lmlab.data.pipeline import get_tokenizer, load_data

    cfg = DataConfig(data_dir=data_dir, vocab_size=args.vocab_size, seq_len=args.seq_len)
    rows = []
    (texts, sources), w, c = timed(lambda: embedded.embedded_corpus(data_dir=data_dir))
    rows.append(("embedded corpus build (5 domains)", w, c))
    _, w, c = timed(lambda: embedded.embedded_corpus(data_dir=data_dir))
    rows.append(("embedded corpus, cached", w, c))
    _, w, c = timed(lambda: get_tokenizer(cfg))
    rows.append((f"BPE training (vocab {args.vocab_size})", w, c))
    data, w, c = timed(lambda: load_data(cfg))
    rows.append(("load_data cold (tokenize + pack)", w, c))
    _, w, c = timed(lambda: load_data(cfg))
    rows.append(("load_data warm (cache hit)", w, c))
    _, w, c = timed(lambda: load_data(cfg.model_copy(update={"seed": 1})))
    rows.append(("load_data, new seed (token cache hit, re-pack)", w, c))

    print(f"data dir: {data_dir}\n")
    print("| stage | wall s | CPU s |\n|---|---:|---:|")
    for name, w, c in rows:
        print(f"| {name} | {w:.2f} | {c:.2f} |")
    print("\n| domain | train docs | val docs | train chars | val chars | train tokens | val tokens | chars/token |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for d, s in data.stats["domains"].items():
        tt, vt = s["train_pack"]["doc_tokens"], s["val_pack"]["doc_tokens"]
        print(f"| {d} | {s['train_docs']:,} | {s['val_docs']:,} | {s['train_chars']:,} | {s['val_chars']:,} "
              f"| {tt:,} | {vt:,} | {s['train_chars'] / max(tt, 1):.2f} |")
    print(f"\ntrain array {data.train.shape} int64, val windows per domain "
          f"{ {d: len(v) for d, v in data.val.items()} }")


if __name__ == "__main__":
    main()
