"""`lmlab` command line. Each subcommand lives beside the code it drives and registers its own parser.

COMMANDS maps a subcommand to "module:function"; the function receives argparse's subparsers object and
adds its parser with `set_defaults(func=...)`. `lmlab data <verb>` is a group: DATA_COMMANDS likewise.
Bad input ends with one line on stderr and exit code 2; LMLAB_DEBUG=1 shows the traceback instead.

This module is the top layer (nn -> models -> data/train/infer -> align/eval -> experiments -> cli): the
commands that need more than one layer live here, `lmlab list` (every registry) and `lmlab data rephrase`
(a data-layer job driven by a model backend resolved from its spec).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

COMMANDS: dict[str, str] = {
    "train": "lmlab.train.cli:register",
    "eval": "lmlab.eval.cli:register",
    "generate": "lmlab.infer.cli:register_generate",
    "serve": "lmlab.infer.cli:register_serve",
    "data": "lmlab.cli:register_data",
    "tokenizer": "lmlab.data.cli:register_tokenizer",
    "align": "lmlab.align.cli:register",
    "vlm": "lmlab.eval.vlm:register",
    "probe": "lmlab.eval.probes:register",
    "reproduce": "lmlab.experiments.cli:register_reproduce",
    "report": "lmlab.experiments.cli:register_report",
    "list": "lmlab.cli:register_list",
}

DATA_COMMANDS: dict[str, str] = {
    "embedded": "lmlab.data.cli:register_embedded",
    "rephrase": "lmlab.cli:register_rephrase",
}


def _load(spec: str):
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(mod), fn)


def register_data(sub) -> None:
    p = sub.add_parser("data", help="build and inspect corpora (embedded corpus, rephrasing, ...)")
    dsub = p.add_subparsers(dest="data_cmd", metavar="VERB")
    dsub.required = True
    for name, spec in DATA_COMMANDS.items():
        _register(dsub, name, spec)


# ------------------------------------------------------------------------------------- lmlab list
def register_list(sub) -> None:
    from lmlab.registry import ALL

    p = sub.add_parser("list", help="list registered components and experiments, one line each",
                       description="Every registry (token mixers, routers, PEFT methods, objectives, data "
                                   "sources, backends, eval tasks, alignment algorithms, reward models, "
                                   "experiments ...) with a one-line description of each entry.")
    p.add_argument("kind", nargs="?", choices=sorted(ALL), metavar="KIND",
                   help=f"only this registry ({', '.join(ALL)})")
    p.add_argument("--json", action="store_true", help="print {registry: {name: description}} as JSON")
    p.set_defaults(func=run_list)


def describe_all(kinds=None) -> dict[str, dict[str, str]]:
    """{registry: {name: one-line description}}; experiments: claim [paper] (headline)."""
    from lmlab.registry import ALL

    out: dict[str, dict[str, str]] = {}
    for kind, reg in ALL.items():
        if kinds and kind not in kinds:
            continue
        rows = {}
        for name, obj in reg.items():
            if kind == "experiments":
                rows[name] = f"{obj.claim} [{obj.paper}]" + (" (headline)" if obj.headline else "")
            else:
                rows[name] = reg.describe(name)
        out[kind] = rows
    return out


def run_list(args) -> int:
    table = describe_all([args.kind] if args.kind else None)
    if args.json:
        print(json.dumps(table, indent=1, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    from lmlab.registry import ALL

    console = Console()
    for kind, rows in table.items():
        t = Table(title=f"{kind} ({ALL[kind].kind}, {len(rows)})", show_header=True, header_style="bold",
                  title_justify="left")
        t.add_column("name", no_wrap=True)
        t.add_column("what")
        for name, what in rows.items():
            t.add_row(name, what)
        if not rows:
            t.add_row("-", "(none registered)")
        console.print(t)
    return 0


# ----------------------------------------------------------------------------- lmlab data rephrase
def resolve_backend(spec: str):
    """`py:module:callable` builds a backend by calling that factory (tests, custom engines); anything else
    goes to `lmlab.backend.load_backend` (smollm2, hf:..., lmlab:..., openai:...)."""
    if spec.startswith("py:"):
        mod, _, fn = spec[3:].partition(":")
        return getattr(importlib.import_module(mod), fn)()
    from lmlab.backend import load_backend

    return load_backend(spec)


def _run_rephrase(a) -> int:
    from lmlab.data.rephrase import RephraseSettings, read_documents, rephrase_corpus, rephrase_corpus_ray

    settings = RephraseSettings(style=a.style, max_tokens=a.max_tokens, shard_size=a.shard_size,
                                batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                                temperature=a.temperature, seed=a.seed, chat=a.chat, max_chunks=a.max_chunks,
                                trim_repetition=a.trim_repetition)
    docs = read_documents(a.inp)
    if a.limit:
        docs = docs[:a.limit]
    if a.ray:
        summary = rephrase_corpus_ray(docs, lambda: resolve_backend(a.backend), a.out, settings,
                                      num_workers=a.ray_workers, ray_address=a.ray_address)
    else:
        backend = resolve_backend(a.backend)
        tok = getattr(backend, "tokenizer", None)
        summary = rephrase_corpus(docs, backend, a.out, settings, tokenizer=tok)
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


def register_rephrase(dsub) -> None:
    from lmlab.data.rephrase import MAX_CHUNK_TOKENS, STYLES

    p = dsub.add_parser("rephrase", help="WRAP: rephrase a corpus in the paper's styles into sharded JSONL")
    p.add_argument("--style", required=True, choices=STYLES)
    p.add_argument("--backend", required=True, help="smollm2 | hf:DIR | lmlab:DIR | openai:URL#model | py:mod:fn")
    p.add_argument("--in", dest="inp", required=True, help=".jsonl (id,text) | .txt | folder | embedded:DOMAIN")
    p.add_argument("--out", required=True, help="output folder (shards, stats, manifest)")
    p.add_argument("--max-tokens", type=int, default=MAX_CHUNK_TOKENS, help="chunk limit (paper: 300)")
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=384)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="only the first N documents")
    p.add_argument("--max-chunks", type=int, default=0, help="only the first N chunks")
    p.add_argument("--trim-repetition", action="store_true", help="cut outputs at their first repeated sentence")
    p.add_argument("--chat", action="store_true", help="send chat messages (backend template) not raw prompts")
    p.add_argument("--ray", action="store_true", help="distribute shards with Ray Data (pip install lmlab[dist])")
    p.add_argument("--ray-workers", type=int, default=2)
    p.add_argument("--ray-address", default=None)
    p.set_defaults(func=_run_rephrase)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmlab",
        description="lmlab: 2024 language-model techniques as tested components and small-scale reproductions.",
    )
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    for name, spec in COMMANDS.items():
        _register(sub, name, spec)
    return parser


def _register(sub, name: str, spec: str) -> None:
    try:
        _load(spec)(sub)
    except ImportError as e:  # an optional extra is missing: keep the rest of the CLI usable
        if name not in sub.choices:
            p = sub.add_parser(name, help=f"(unavailable: {e})")
            p.set_defaults(func=lambda a, _e=e, _n=name: sys.exit(f"lmlab {_n}: unavailable: {_e}"))


def main(argv: list[str] | None = None) -> None:
    from lmlab.config import ConfigError
    from lmlab.registry import RegistryError

    args = build_parser().parse_args(argv)
    one_line = (ConfigError, RegistryError, FileNotFoundError, ValueError)
    try:
        rc = args.func(args)
    except one_line as e:
        if os.environ.get("LMLAB_DEBUG"):
            raise
        print(f"lmlab {args.cmd}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
