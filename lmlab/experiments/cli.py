"""`lmlab reproduce` and `lmlab report` (`lmlab list` is in lmlab/cli.py: it shows every layer's registries)."""
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
    p.add_argument("--seeds", type=int_range(1, 1000), default=None,
                   help="seeds per arm (default: 3, or more where an experiment declares more)")
    p.add_argument("--out", type=out_path, help="output dir (default reports/<timestamp>); reusing it resumes and "
                                                "reruns exactly the runs whose config or code changed")
    p.add_argument("--jobs", type=int_range(1, 256), default=1, metavar="N",
                   help="run the (experiment, arm, seed) runs in N local worker processes, each with "
                        "cores // N torch threads (default 1: sequential, in this process)")
    p.add_argument("--ray", action="store_true",
                   help="submit the runs as Ray tasks: to a local cluster started here with --jobs slots, or to "
                        "the cluster at --ray-address")
    p.add_argument("--ray-address", type=text, metavar="ADDR", help="an existing Ray cluster (with --ray)")
    p.add_argument("--no-progress", action="store_true", help="no live table of runs")
    p.set_defaults(func=_reproduce)


def _reproduce(args) -> int:
    from lmlab.experiments.runner import reproduce

    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds={args.seeds}: must be >= 1")
    if args.ray_address and not args.ray:
        raise ValueError(f"--ray-address={args.ray_address}: needs --ray")
    if args.ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("--ray: the ray package is not installed (pip install 'lmlab[dist]')") from None
    reproduce(args.only, args.scale, args.seeds, args.out, args.all, not args.no_progress, jobs=args.jobs,
              ray=args.ray, ray_address=args.ray_address)
    return 0


def register_report(sub) -> None:
    p = sub.add_parser("report", help="write reports from reproduce results (the README catalogue table)",
                       description="`lmlab report readme` rewrites the README catalogue between <!-- claims:begin --> "
                                   "and <!-- claims:end --> from results/claims.json and results/catalogue.yaml.")
    rsub = p.add_subparsers(dest="report_cmd", metavar="WHAT")
    rsub.required = True
    r = rsub.add_parser("readme", help="regenerate (or --check) the README catalogue table from claims.json")
    r.add_argument("--from", dest="from_dir", type=Path, metavar="RUN_DIR",
                   help="first copy RUN_DIR/claims.json and RUN_DIR/reproduce.json (a `lmlab reproduce --all` "
                        "output) into results/")
    r.add_argument("--claims", type=Path, help="claims.json to read (default results/claims.json)")
    r.add_argument("--readme", type=Path, help="README to rewrite (default the checkout's README.md)")
    r.add_argument("--check", action="store_true", help="change nothing; exit 1 when the table is out of date")
    r.add_argument("--allow-uncommitted", action="store_true",
                   help="with --from: accept a run made from uncommitted code")
    r.set_defaults(func=_report_readme)
    d = rsub.add_parser("diff", help="which claims changed verdict, effect or CI between two reports",
                        description="Compares two `lmlab reproduce` folders (or two claims.json files) claim by "
                                    "claim: prints a table and writes diff.md, diff.json and a paired forest plot.")
    d.add_argument("old", type=Path, metavar="OLD", help="report folder or claims.json before")
    d.add_argument("new", type=Path, metavar="NEW", help="report folder or claims.json after")
    d.add_argument("--out", type=out_path, help="where to write diff.md, diff.json, diff_forest.png "
                                                "(default reports/diff-<timestamp>)")
    d.set_defaults(func=_report_diff)
    h = rsub.add_parser("html", help="(re)write report.html of a reproduce folder from its files")
    h.add_argument("folder", type=Path, metavar="RUN_DIR")
    h.set_defaults(func=_report_html)


def _report_readme(args) -> int:
    import json
    import shutil

    from lmlab import report

    claims = args.claims or report.RESULTS_DIR / "claims.json"
    readme = args.readme or report.REPO / "README.md"
    if args.from_dir is not None:
        src = args.from_dir / "claims.json"
        if not src.exists():
            raise FileNotFoundError(f"{src}: not a `lmlab reproduce` output directory")
        meta = json.loads((args.from_dir / "reproduce.json").read_text())
        label = meta.get("code_version") or ""
        if "uncommitted" in label and not args.allow_uncommitted:
            raise ValueError(f"{args.from_dir} was run from uncommitted code ({label}); commit, rerun "
                             "(unchanged runs are reused) or pass --allow-uncommitted")
        missing = [e for r in report.load_catalogue() for e in r.get("experiments", [])
                   if e not in {c["name"] for c in json.loads(src.read_text())}]
        if missing:
            print(f"warning: {len(missing)} catalogue experiments have no result in {src}")
        report.RESULTS_DIR.mkdir(exist_ok=True)
        shutil.copyfile(src, claims)
        shutil.copyfile(args.from_dir / "reproduce.json", claims.with_name("reproduce.json"))
    if not claims.exists():
        raise FileNotFoundError(f"{claims}: run `lmlab reproduce --all --seeds 3 --out DIR` at a commit, then "
                                "`lmlab report readme --from DIR`")
    block = report.readme_block(claims)
    text = readme.read_text()
    if args.check:
        if report.current_block(text) != block:
            print(f"{readme}: the catalogue table differs from {claims}; run `lmlab report readme`")
            return 1
        print(f"{readme}: the catalogue table matches {claims}")
        return 0
    new = report.replace_block(text, block)
    if new != text:
        readme.write_text(new)
    print(f"{readme}: catalogue table {'rewritten' if new != text else 'already up to date'} from {claims}")
    return 0



def _report_diff(args) -> int:
    import json
    import time

    from lmlab.forest import diff_claims, diff_table, load_rows, plot_forest_pair
    from lmlab.io import atomic_write_text

    diff = diff_claims(load_rows(args.old), load_rows(args.new))
    out = Path(args.out or Path("reports") / f"diff-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    table = diff_table(diff)
    changed = [d for d in diff if d["changed"]]
    head = (f"# lmlab report diff\n\nOLD: `{args.old}`\nNEW: `{args.new}`\n\n"
            f"{len(changed)} of {len(diff)} claims changed verdict, effect or CI.\n\n")
    fig = plot_forest_pair(diff, out / "diff_forest.png", "old", "new")
    atomic_write_text(out / "diff.md", head + table + ("\n![paired forest plot](diff_forest.png)\n" if fig else ""))
    atomic_write_text(out / "diff.json", json.dumps(diff, indent=2, default=float))
    print(table, end="")
    print(f"{len(changed)} of {len(diff)} claims changed; written {out / 'diff.md'} and {out / 'diff_forest.png'}")
    return 0


def _report_html(args) -> int:
    from lmlab.report_html import write_html

    print(write_html(args.folder))
    return 0
