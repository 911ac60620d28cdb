"""`lmlab tokenizer train` and `lmlab data embedded`."""
from __future__ import annotations

import argparse
import time

from lmlab.argtypes import int_range, out_path, path_text, text

MAX_VOCAB = 1 << 20


def register_tokenizer(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on local files or datasets")
    tsub = p.add_subparsers(dest="tok_cmd", metavar="VERB")
    tsub.required = True
    t = tsub.add_parser("train", help="train a byte-level BPE (with <|endoftext|>) and save tokenizer.json",
                        description="Train a byte-level BPE on documents from .txt/.jsonl/.parquet files, "
                                    "directories, saved datasets or hf:NAME sources.")
    t.add_argument("--input", nargs="+", type=path_text, required=True, metavar="PATH",
                   help="sources (files, dirs, hf:NAME)")
    t.add_argument("--vocab-size", type=int_range(257, MAX_VOCAB), default=4096,
                   help="target vocabulary size (>= 257)")
    t.add_argument("--out", type=out_path, required=True, help="output directory (tokenizer.json)")
    t.add_argument("--text-field", type=text, default="text", help="field holding the text in jsonl/parquet/datasets")
    t.add_argument("--sample", type=text, default="The quick brown fox — naïve café, 1234 λx.x",
                   help="text to encode as a check")
    t.set_defaults(func=run_tokenizer_train)


def run_tokenizer_train(args: argparse.Namespace) -> int:
    from lmlab.data.sources import SourceStats, iter_documents
    from lmlab.data.tokenizer import train_tokenizer

    from pathlib import Path

    for src in args.input:
        if not src.startswith("hf:") and not Path(src).expanduser().exists():
            raise FileNotFoundError(f"--input {src}: no such file or directory")
    stats = SourceStats()
    kept = [0]

    def texts():
        for src in args.input:
            for doc in iter_documents(src, args.text_field, stats):
                if doc.text.strip():
                    kept[0] += 1
                    yield doc.text

    t0 = time.perf_counter()
    tok = train_tokenizer(texts(), args.vocab_size)  # saved only once the input is known to be text
    where = " ".join(args.input)
    if not kept[0]:
        skipped = f"; skipped {len(stats.skipped_files)} files of unknown type" if stats.skipped_files else ""
        raise ValueError(f"--input {where}: no text to train on ({stats.files} files, 0 documents{skipped})")
    if stats.non_utf8_bytes * 2 > stats.chars:
        raise ValueError(f"--input {where}: mostly not UTF-8 text ({stats.non_utf8_bytes:,} undecodable bytes in "
                         f"{stats.chars:,} characters); is it a binary file?")
    tok.save(args.out)
    ids = tok.encode(args.sample)
    print(f"trained on {stats.documents} documents ({stats.chars:,} chars) in {time.perf_counter() - t0:.1f}s")
    _print_source_issues(stats.to_dict())
    print(f"vocab_size={tok.vocab_size} eos_id={tok.eos_id} saved to {args.out}/tokenizer.json")
    print(f"sample: {args.sample!r} -> {len(ids)} tokens {ids[:24]}")
    if hasattr(tok.backend, "id_to_token"):
        print(f"pieces: {[tok.backend.id_to_token(i) for i in ids[:24]]}")
    assert tok.decode(ids) == args.sample
    return 0


def _print_source_issues(st: dict) -> None:
    keys = ("empty_documents", "non_utf8_files", "non_utf8_bytes", "huge_lines", "split_pieces",
            "malformed_lines", "missing_field")
    issues = {k: st[k] for k in keys if st.get(k)}
    if issues:
        print("source issues (counted, nothing lost): " + ", ".join(f"{k}={v}" for k, v in issues.items()))
    if st.get("skipped_files"):
        print(f"skipped (unknown extension): {len(st['skipped_files'])} files, e.g. {st['skipped_files'][0]}")


def register_embedded(dsub) -> None:
    p = dsub.add_parser("embedded", help="build the offline multi-domain corpus (code, docs, 3 Bible styles)",
                        description="Build (or load from cache) the embedded corpus and print documents, "
                                    "characters and tokens per domain and split.")
    p.add_argument("--out", type=out_path, default=None, help="data dir (default: $LMLAB_DATA or ~/.cache/lmlab)")
    p.add_argument("--domains", nargs="+", default=None, help="subset of: code docs bible_kjv bible_web bible_bbe")
    p.add_argument("--max-chars", type=int_range(1000, 1 << 40), default=None,
                   help="characters per domain (default 2,000,000)")
    p.add_argument("--vocab-size", type=int_range(257, MAX_VOCAB), default=4096,
                   help="embedded BPE size used to count tokens")
    p.add_argument("--no-tokens", action="store_true", help="skip tokenizing (documents and characters only)")
    p.set_defaults(func=run_embedded)


def run_embedded(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from lmlab.config import DataConfig
    from lmlab.data import embedded
    from lmlab.data.pipeline import get_tokenizer

    args.out = str(args.out) if args.out is not None else None
    t0 = time.perf_counter()
    if args.max_chars:
        embedded.DEFAULT_MAX_CHARS = args.max_chars  # also keys the embedded tokenizer's cache
    texts, sources = embedded.embedded_corpus(args.domains, args.out, max_chars=embedded.DEFAULT_MAX_CHARS)
    built = time.perf_counter() - t0
    tok = None
    if not args.no_tokens:
        tok = get_tokenizer(DataConfig(data_dir=args.out, vocab_size=args.vocab_size))
    table = Table(title=f"embedded corpus {embedded.VERSION} "
                        f"({embedded.embedded_dir(args.out, embedded.DEFAULT_MAX_CHARS)})")
    for col in ("domain", "split", "documents", "characters", "tokens", "chars/token"):
        table.add_column(col, justify="left" if col in ("domain", "split") else "right")
    for d, v in texts.items():
        for split in ("train", "val"):
            docs = v[split]
            chars = sum(map(len, docs))
            ntok = sum(len(x) for x in tok.encode_batch(docs)) if tok else None
            table.add_row(d, split, f"{len(docs):,}", f"{chars:,}", f"{ntok:,}" if tok else "-",
                          f"{chars / max(ntok, 1):.2f}" if tok else "-")
    console = Console()
    console.print(table)
    pkgs = {}
    for d in texts:
        pkgs.update(sources.get(d, {}).get("packages", {}))
    console.print(f"corpus ready in {built:.1f}s; sources: " + ", ".join(f"{k} {v}" for k, v in sorted(pkgs.items())
                                                                       if k.startswith("python")))
    return 0
