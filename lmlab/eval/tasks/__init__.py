"""Evaluation tasks by name. Each task module registers its factories in `lmlab.registry.EVAL_TASKS`; a
factory returns a `lmlab.eval.runner.Task`. Data come from local files in each benchmark's public format
(MMLU and HumanEval from installed wheels, offline).

    from lmlab.eval.tasks import get_task
    task = get_task("mmlu", mode="generate")
    EVAL_TASKS.names()                              # every registered task (`lmlab list eval_tasks`)
"""
from __future__ import annotations

from pathlib import Path

from lmlab.registry import EVAL_TASKS

SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def is_task_spec(name: str) -> bool:
    """A task given as a spec file (see `lmlab.eval.runner.task_from_spec`) rather than a registered name."""
    return Path(name).suffix in SPEC_SUFFIXES


def get_task(name: str, **kwargs):
    """A registered task by name (kwargs go to its factory), or a task spec .yaml/.json file."""
    if name not in EVAL_TASKS:
        if is_task_spec(name):
            from lmlab.eval.runner import task_from_spec
            return task_from_spec(name)
        raise ValueError(f"unknown task {name!r}; known: {EVAL_TASKS.names()} (or a task spec .yaml)")
    return EVAL_TASKS.get(name)(**kwargs)
