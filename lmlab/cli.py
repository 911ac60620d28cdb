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
    "annotate": "lmlab.annotate.cli:register",
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
def resolve_backend(spec: str, flag: str = "--backend"):
    """`py:module:callable` builds a backend by calling that factory (tests, custom engines); anything else
    goes to `lmlab.backend.load_backend` (smollm2, hf:..., lmlab:..., openai:...)."""
    if spec.startswith("py:"):
        mod, _, fn = spec[3:].partition(":")
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"{flag} {spec}: cannot import ({type(e).__name__}: {e})") from None
        return factory()
    from lmlab.infer.cli import load_model

    return load_model(spec, flag)


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
        backend = resolve_backend(a.backend, "--backend")
        tok = getattr(backend, "tokenizer", None)
        summary = rephrase_corpus(docs, backend, a.out, settings, tokenizer=tok)
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


def register_rephrase(dsub) -> None:
    from lmlab.argtypes import float_range, int_range, nonneg_int, out_path, path_text, text
    from lmlab.data.rephrase import MAX_CHUNK_TOKENS, STYLES

    p = dsub.add_parser("rephrase", help="WRAP: rephrase a corpus in the paper's styles into sharded JSONL")
    p.add_argument("--style", required=True, choices=STYLES)
    p.add_argument("--backend", type=text, required=True,
                   help="smollm2 | hf:DIR | lmlab:DIR | openai:URL#model | py:mod:fn")
    p.add_argument("--in", dest="inp", type=path_text, required=True,
                   help=".jsonl (id,text) | .txt | folder | embedded:DOMAIN")
    p.add_argument("--out", type=out_path, required=True, help="output folder (shards, stats, manifest)")
    p.add_argument("--max-tokens", type=int_range(8, 1 << 20), default=MAX_CHUNK_TOKENS, help="chunk limit (paper: 300)")
    p.add_argument("--shard-size", type=int_range(1, 1 << 20), default=64)
    p.add_argument("--batch-size", type=int_range(1, 1 << 16), default=16)
    p.add_argument("--max-new-tokens", type=int_range(1, 1 << 20), default=384)
    p.add_argument("--temperature", type=float_range(0.0, 100.0), default=0.0)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--limit", type=nonneg_int, default=0, help="only the first N documents")
    p.add_argument("--max-chunks", type=nonneg_int, default=0, help="only the first N chunks")
    p.add_argument("--trim-repetition", action="store_true", help="cut outputs at their first repeated sentence")
    p.add_argument("--chat", action="store_true", help="send chat messages (backend template) not raw prompts")
    p.add_argument("--ray", action="store_true", help="distribute shards with Ray Data (pip install lmlab[dist])")
    p.add_argument("--ray-workers", type=int_range(1, 4096), default=2)
    p.add_argument("--ray-address", default=None)
    p.set_defaults(func=_run_rephrase)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or only `only`'s (each command imports its own module: a run of one command
    does not pay for importing every layer)."""
    parser = Parser(
        prog="lmlab",
        description="lmlab: 2024 language-model techniques as tested components and small-scale reproductions.",
    )
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    for name, spec in COMMANDS.items():
        if only is None or name == only:
            _register(sub, name, spec)
    return parser


def _register(sub, name: str, spec: str) -> None:
    try:
        _load(spec)(sub)
    except ImportError as e:  # an optional extra is missing: keep the rest of the CLI usable
        if name not in sub.choices:
            p = sub.add_parser(name, help=f"(unavailable: {e})")
            p.set_defaults(func=lambda a, _e=e, _n=name: sys.exit(f"lmlab {_n}: unavailable: {_e}"))


# ------------------------------------------------------------------------------------------ errors
class Parser(argparse.ArgumentParser):
    """argparse with its usage errors in one line (`lmlab train: error: argument --out: ...`); subcommand
    parsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str, limit: int = 400) -> str:
    """Collapse a message to one line (multi-line library messages keep their first lines)."""
    flat = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def describe_error(e: BaseException) -> str | None:
    """The one-line message for an exception that comes from bad input (a file, a flag, a config), or None
    for anything else (a bug: it keeps its traceback)."""
    from lmlab.config import ConfigError
    from lmlab.registry import RegistryError

    if isinstance(e, UnicodeDecodeError):
        return f"input is not UTF-8 text ({e.reason} at byte {e.start})"
    if isinstance(e, (ConfigError, RegistryError, ValueError)):
        return one_line(str(e)) or type(e).__name__
    if isinstance(e, OSError):
        if e.filename is not None and e.strerror:
            other = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
            return f"{e.filename}{other}: {e.strerror}"
        return one_line(str(e)) or type(e).__name__
    if isinstance(e, MemoryError):
        return "out of memory (lower the model or batch size)"
    if isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e).lower()):
        return "out of memory: " + one_line(str(e).split("(")[0], 200)
    return None


def close_progress() -> None:
    """End any progress bar still on screen, so that an error line starts on a line of its own."""
    tq = sys.modules.get("tqdm.std")
    if tq is not None:
        for bar in list(getattr(tq.tqdm, "_instances", ()) or ()):
            try:
                bar.close()
            except Exception:  # noqa: BLE001 - best effort while already failing
                pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # dotted key=value overrides may also follow the options (`lmlab align sft --config X sft.lr=1e-3`):
        # argparse gives a positional list only the tokens before the first option
        if isinstance(getattr(args, "overrides", None), list) and all("=" in a and not a.startswith("-")
                                                                      for a in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        close_progress()
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - classified by describe_error; anything else is re-raised
        msg = describe_error(e)
        if msg is None or os.environ.get("LMLAB_DEBUG"):
            raise
        close_progress()
        print(f"lmlab {args.cmd}: error: {msg}", file=sys.stderr)
        sys.exit(2)
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
