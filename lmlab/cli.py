"""`lmlab` command line. Each subcommand lives beside the code it drives and registers its own parser.

COMMANDS maps a subcommand to "module:function"; the function receives argparse's subparsers object and
adds its parser with `set_defaults(func=...)`. `lmlab data <verb>` is a group: DATA_COMMANDS likewise.
Bad input ends with one line on stderr and exit code 2; LMLAB_DEBUG=1 shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
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
    "probe": "lmlab.eval.probes:register",
    "reproduce": "lmlab.experiments.cli:register_reproduce",
    "report": "lmlab.experiments.cli:register_report",
    "list": "lmlab.experiments.cli:register_list",
}

DATA_COMMANDS: dict[str, str] = {
    "embedded": "lmlab.data.cli:register_embedded",
    "rephrase": "lmlab.data.rephrase:register_rephrase",
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
