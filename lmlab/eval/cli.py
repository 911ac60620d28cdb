"""`lmlab eval --task mmlu --model smollm2 --limit 200`: run one task on one backend, print a markdown table
with bootstrap 95% confidence intervals, write results JSON (+ .md) under --out."""
from __future__ import annotations

import re
import time
from pathlib import Path

from lmlab.argtypes import in_path, int_range, nonneg_int, out_path, positive_int, text


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model backend on a benchmark (MMLU, HumanEval, GSM8K, ...)",
                       description="Tasks: any of `lmlab list eval_tasks` (mmlu, mmlu_mc, gpqa, math, mgsm, drop, "
                                   "humaneval, gsm8k, ...) or a task spec .yaml. Models: smollm2, lmlab:DIR, "
                                   "hf:DIR, PATH.gguf, openai:URL#MODEL.")
    p.add_argument("--task", type=text, required=True)
    p.add_argument("--model", type=text, required=True, help="backend spec, e.g. smollm2")
    p.add_argument("--limit", type=positive_int, help="first N documents (MMLU is shuffled with a fixed seed first)")
    p.add_argument("--data", type=in_path,
                   help="local data file for tasks without a shipped copy (gpqa, math, mgsm, drop, gsm8k)")
    p.add_argument("--fewshot", type=in_path, help="few-shot examples file (gsm8k, drop)")
    p.add_argument("--mode", choices=["generate", "loglikelihood"], default="generate",
                   help="mmlu: chain-of-thought generation (simple-evals) or letter log-likelihood")
    p.add_argument("--n-samples", type=int_range(1, 1000), default=1, help="humaneval: samples per problem (pass@k)")
    p.add_argument("--max-new-tokens", type=int_range(1, 1 << 20))
    p.add_argument("--judge", type=text, help="math: equivalence-judge backend spec (default: normalised string match)")
    p.add_argument("--lang", type=text, default="en", help="mgsm language")
    p.add_argument("--completion", action="store_true", help="humaneval: base-model completion instead of chat")
    p.add_argument("--batch-size", type=int_range(1, 1 << 16), default=8)
    p.add_argument("--seed", type=nonneg_int, default=0, help="bootstrap seed")
    p.add_argument("--out", type=out_path, default=Path("runs/eval"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _task_kwargs(args) -> dict:
    kw: dict = {}
    if args.data:
        kw["path"] = str(args.data)
    if args.max_new_tokens:
        kw["max_new_tokens"] = args.max_new_tokens
    if args.task == "mmlu":
        kw["mode"] = args.mode
    if args.task in ("gsm8k", "drop") and args.fewshot:
        kw["fewshot_path"] = str(args.fewshot)
    if args.task == "humaneval":
        kw.update(n_samples=args.n_samples, ks=tuple(k for k in (1, 5, 10, 100) if k <= args.n_samples),
                  chat=not args.completion)
    if args.task == "mgsm":
        kw["lang"] = args.lang
    return kw


def run(args) -> int:
    from lmlab.config import ConfigError
    from lmlab.eval.runner import TaskDataError, check_documents, evaluate
    from lmlab.eval.tasks import get_task, is_task_spec
    from lmlab.infer.cli import load_model
    from lmlab.io import atomic_write_text
    from lmlab.registry import EVAL_TASKS

    if args.task in ("gpqa", "math", "mgsm", "drop", "gsm8k") and not args.data:
        raise ConfigError(f"--task {args.task} needs --data PATH (no copy of this benchmark ships with lmlab)")
    known = args.task in EVAL_TASKS
    if not known and not is_task_spec(args.task):
        raise ConfigError(f"--task {args.task!r}: unknown; known: {EVAL_TASKS.names()} (or a task spec .yaml)")
    kw = _task_kwargs(args)
    where = f"--data {args.data}" if args.data else f"--task {args.task}"
    if args.task == "math" and args.judge:
        kw["judge"] = load_model(args.judge, "--judge")
    try:
        task = get_task(args.task, **kw) if known else get_task(args.task)
    except KeyError as e:  # a loader reading a column the file does not have
        raise TaskDataError(f"{where}: a record has no field {e.args[0]!r}") from None
    try:
        check_documents(task, task.docs[:args.limit] if args.limit else task.docs)
    except TaskDataError as e:
        raise TaskDataError(f"{where}: {e}") from None
    backend = load_model(args.model)
    res = evaluate(task, backend, limit=args.limit, batch_size=args.batch_size, progress=not args.no_progress,
                   seed=args.seed)
    res.config.update({"task": args.task, "model": args.model, "task_kwargs": {k: str(v) for k, v in kw.items()}})
    stem = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{res.task}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    path = res.save(args.out / f"{stem}.json")
    atomic_write_text(args.out / f"{stem}.md", res.markdown() + "\n")
    print(res.markdown())
    print(f"\nresults: {path}")
    return 0
