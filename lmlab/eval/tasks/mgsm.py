"""MGSM (Shi et al.) in the simple-evals format: the model writes its reasoning and ends with
"<answer prefix>: <integer>"; the answer is the LAST number after the LAST answer prefix (commas removed).

Data: the public TSVs `mgsm_<lang>.tsv` (question \\t answer, no header) or JSONL {question, answer}.
The instruction is simple-evals' English one for every language; the answer prefix is the language's own.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from lmlab.registry import EVAL_TASKS

ANSWER_PREFIX = {"en": "Answer", "es": "Respuesta", "fr": "Réponse", "de": "Antwort", "ru": "Ответ",
                 "zh": "答案", "ja": "答え", "th": "คำตอบ", "sw": "Jibu", "bn": "উত্তর", "te": "సమాధానం"}

INSTRUCTION = ("Solve this math problem. Give the reasoning steps before giving the final answer on the last line "
               "by itself in the format of \"{prefix}:\". Do not add anything other than the integer answer after "
               "\"{prefix}:\".\n\n{question}")


def parse_answer(response: str, prefix: str = "Answer") -> str:
    if prefix not in response:
        return ""
    tail = response.split(prefix)[-1].strip()
    numbers = re.findall(r"\d+\.?\d*", tail.replace(",", ""))
    return numbers[-1].rstrip(".") if numbers else ""


def score_answer(target: str, pred: str) -> bool:
    if not pred:
        return False
    try:
        return float(target.replace(",", "")) == float(pred)
    except ValueError:
        return target.strip() == pred.strip()


def load_mgsm(path: str) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"MGSM data not found: {p}")
    if p.suffix == ".tsv":
        with open(p, newline="", encoding="utf-8") as f:
            return [{"question": q, "answer": a} for q, a in csv.reader(f, delimiter="\t")]
    from lmlab.eval.runner import read_jsonl
    return read_jsonl(p)


@EVAL_TASKS.register("mgsm", help="MGSM, multilingual grade-school math in the simple-evals format")
def mgsm_task(path: str, lang: str = "en", max_new_tokens: int = 512, **_):
    from lmlab.backend import GenerationConfig
    from lmlab.eval.runner import Task
    if lang not in ANSWER_PREFIX:
        raise ValueError(f"mgsm: unknown language {lang!r}; known: {sorted(ANSWER_PREFIX)}")
    prefix = ANSWER_PREFIX[lang]

    def score(doc, outs):
        return {"acc": sum(score_answer(str(doc["answer"]), parse_answer(o, prefix)) for o in outs) / len(outs)}
    return Task(f"mgsm_{lang}", load_mgsm(path), "generate_until",
                lambda d: INSTRUCTION.format(prefix=prefix, question=d["question"]), score, "acc",
                category=lambda d: lang, gen=GenerationConfig(max_new_tokens=max_new_tokens))
