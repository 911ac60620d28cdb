"""GPQA (Rein et al.) in the simple-evals format: the MMLU chain-of-thought template with the four options
shuffled by a per-question seeded permutation; the LAST "Answer: X" wins.

Data: the public CSV (`gpqa_diamond.csv`, columns Question, Correct Answer, Incorrect Answer 1..3,
High-level domain) or JSONL with the same keys. The dataset is gated, so no copy ships with lmlab.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

from lmlab.eval.tasks.common import MULTICHOICE_TEMPLATE, extract_choice
from lmlab.registry import EVAL_TASKS


def load_gpqa(path: str, seed: int = 0) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"GPQA data not found: {p} (download gpqa_diamond.csv from the GPQA release)")
    if p.suffix == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        from lmlab.eval.runner import read_jsonl
        rows = read_jsonl(p)
    rng = random.Random(seed)
    docs = []
    for r in rows:
        options = [r["Correct Answer"], r["Incorrect Answer 1"], r["Incorrect Answer 2"], r["Incorrect Answer 3"]]
        perm = rng.sample(range(4), 4)
        shuffled = [options[i] for i in perm]
        docs.append({"question": r["Question"], "options": shuffled, "answer": "ABCD"[perm.index(0)],
                     "domain": r.get("High-level domain", "unknown")})
    return docs


def gpqa_prompt(doc: dict) -> str:
    A, B, C, D = (o.strip() for o in doc["options"])
    return MULTICHOICE_TEMPLATE.format(question=doc["question"].strip(), A=A, B=B, C=C, D=D)


def score(doc: dict, outs: list[str]) -> dict[str, float]:
    got = [extract_choice(o) for o in outs]
    return {"acc": sum(g == doc["answer"] for g in got) / len(got)}


@EVAL_TASKS.register("gpqa", help="GPQA, simple-evals multiple-choice chain of thought")
def gpqa_task(path: str, seed: int = 0, max_new_tokens: int = 1024, **_):
    from lmlab.backend import GenerationConfig
    from lmlab.eval.runner import Task
    return Task("gpqa", load_gpqa(path, seed), "generate_until", gpqa_prompt, score, "acc",
                category=lambda d: d["domain"], gen=GenerationConfig(max_new_tokens=max_new_tokens))
