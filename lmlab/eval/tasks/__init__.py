"""Evaluation tasks by name. Each factory returns a `lmlab.eval.runner.Task`; data come from local files in each
benchmark's public format (MMLU and HumanEval from installed wheels, offline).

    from lmlab.eval.tasks import get_task, TASKS
    task = get_task("mmlu", mode="generate")
"""
from __future__ import annotations

import importlib

TASKS: dict[str, str] = {
    "mmlu": "lmlab.eval.tasks.mmlu:mmlu_task",
    "mmlu_mc": "lmlab.eval.tasks.mmlu:mmlu_mc_task",
    "mmlu_cloze": "lmlab.eval.tasks.mmlu:mmlu_cloze_task",
    "gpqa": "lmlab.eval.tasks.gpqa:gpqa_task",
    "math": "lmlab.eval.tasks.math:math_task",
    "mgsm": "lmlab.eval.tasks.mgsm:mgsm_task",
    "drop": "lmlab.eval.tasks.drop:drop_task",
    "humaneval": "lmlab.eval.tasks.humaneval:humaneval_task",
    "gsm8k": "lmlab.eval.tasks.gsm8k:gsm8k_task",
}


def get_task(name: str, **kwargs):
    if name not in TASKS:
        from pathlib import Path
        if Path(name).suffix in (".yaml", ".yml", ".json"):
            from lmlab.eval.runner import task_from_spec
            return task_from_spec(name)
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)} (or a task spec .yaml)")
    mod, _, fn = TASKS[name].partition(":")
    return getattr(importlib.import_module(mod), fn)(**kwargs)
