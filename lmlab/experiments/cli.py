"""`lmlab reproduce` and `lmlab list`."""
from __future__ import annotations

from pathlib import Path


def register_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run paper-claim experiments (baseline vs technique over seeds) and write a report",
                       description="Runs experiments (default: the headline set), computes each verdict from measured "
                                   "numbers, and writes reports/<timestamp>/README.md with a claims table and plots.")
    p.add_argument("--only", nargs="+", metavar="NAME", help="experiments to run (see `lmlab list`)")
    p.add_argument("--all", action="store_true", help="every registered experiment")
    p.add_argument("--scale", choices=["quick", "full"], default="quick",
                   help="quick: minutes on a laptop CPU; full: GPU-sized configs")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    p.add_argument("--out", type=Path, help="output dir (default reports/<timestamp>); reusing it resumes")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_reproduce)


def _reproduce(args) -> int:
    from lmlab.experiments.runner import reproduce

    if args.seeds < 1:
        raise ValueError(f"--seeds={args.seeds}: must be >= 1")
    reproduce(args.only, args.scale, args.seeds, args.out, args.all, not args.no_progress)
    return 0


def register_list(sub) -> None:
    p = sub.add_parser("list", help="list registered components and experiments")
    p.set_defaults(func=_list)


def _list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from lmlab.registry import ALL

    console = Console()
    for kind, reg in ALL.items():
        t = Table(title=kind, show_header=True, header_style="bold")
        t.add_column("name")
        t.add_column("what")
        for name, obj in reg.items():
            if kind == "experiments":
                what = f"{obj.claim} [{obj.paper}]" + (" (headline)" if obj.headline else "")
            else:
                doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
                what = doc[0] if doc else getattr(obj, "__module__", "")
            t.add_row(name, what)
        console.print(t)
    return 0
