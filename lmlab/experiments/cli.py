"""`lmlab reproduce` (`lmlab list` is in lmlab/cli.py: it shows every layer's registries)."""
from __future__ import annotations

from pathlib import Path

from lmlab.argtypes import int_range, out_path, text


def register_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run paper-claim experiments (baseline vs technique over seeds) and write a report",
                       description="Runs experiments (default: the headline set), computes each verdict from measured "
                                   "numbers, and writes reports/<timestamp>/README.md with a claims table and plots.")
    p.add_argument("--only", nargs="+", type=text, metavar="NAME", help="experiments to run (see `lmlab list`)")
    p.add_argument("--all", action="store_true", help="every registered experiment")
    p.add_argument("--scale", choices=["quick", "full"], default="quick",
                   help="quick: minutes on a laptop CPU; full: GPU-sized configs")
    p.add_argument("--seeds", type=int_range(1, 1000), default=3, help="seeds per arm (default 3)")
    p.add_argument("--out", type=out_path, help="output dir (default reports/<timestamp>); reusing it resumes")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_reproduce)


def _reproduce(args) -> int:
    from lmlab.experiments.runner import reproduce

    if args.seeds < 1:
        raise ValueError(f"--seeds={args.seeds}: must be >= 1")
    reproduce(args.only, args.scale, args.seeds, args.out, args.all, not args.no_progress)
    return 0
