"""MATH (Hendrycks et al.) in the simple-evals format: the answer is the LAST "Answer: ..." line; correctness
is decided by an equivalence judge (any backend, simple-evals' few-shot "Yes/No" prompt) or, without one, by
a conservative normalised string comparison.

Data: JSONL rows {problem, solution, [answer], [type|subject], [level]} (the public MATH / MATH-500 format;
the answer falls back to the last \\boxed{} of the solution) or CSV with Question, Answer.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional

from lmlab.eval.tasks.common import ANSWER_PATTERN, last_boxed, last_match
from lmlab.registry import EVAL_TASKS

QUERY_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $ANSWER (without quotes) where $ANSWER is the answer to the problem.\n\n{problem}\n\n"
    "Remember to put your answer on its own line after \"Answer:\", and you do not need to use a \\boxed "
    "command."
)

EQUALITY_TEMPLATE = r"""Look at the following two expressions (answers to a math problem) and judge whether they are equivalent. Only perform trivial simplifications

Examples:

    Expression 1: $2x+3$
    Expression 2: $3+2x$

Yes

    Expression 1: 3/2
    Expression 2: 1.5

Yes

    Expression 1: $x^2+2x+1$
    Expression 2: $y^2+2y+1$

No

    Expression 1: $x^2+2x+1$
    Expression 2: $(x+1)^2$

Yes

    Expression 1: 3245/5
    Expression 2: 649

No
(these are actually equal, don't mark them equivalent if you need to do nontrivial simplifications)

    Expression 1: 2/(-3)
    Expression 2: -2/3

Yes
(trivial simplifications are allowed)

    Expression 1: 72 degrees
    Expression 2: 72

Yes
(give benefit of the doubt to units)

    Expression 1: 64
    Expression 2: 64 square feet

Yes
(give benefit of the doubt to units)

---

YOUR TASK


Respond with only "Yes" or "No" (without quotes). Do not include a rationale.

    Expression 1: %(expression1)s
    Expression 2: %(expression2)s
""".strip()


def extract_answer(response: str) -> Optional[str]:
    got = last_match(ANSWER_PATTERN, response)
    if got is None:
        return last_boxed(response)
    inner = last_boxed(got)
    return (inner if inner is not None else got).strip()


def normalize_math(s: str) -> str:
    """Cheap canonical form: drop $, spaces, \\left/\\right, \\!, text units, trailing '.', dfrac->frac, 0.50->0.5."""
    s = s.strip()
    b = last_boxed(s)
    s = b if b is not None else s
    s = re.sub(r"\\text\{\s*[a-zA-Z ]*\}", "", s)
    for a, r in (("$", ""), ("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                 ("dfrac", "frac"), ("tfrac", "frac"), ("^\\circ", ""), ("^{\\circ}", ""), (" ", "")):
        s = s.replace(a, r)
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d+(\.\d+)?", s.replace(",", "")):
        s = s.replace(",", "")
        s = str(float(s)).rstrip("0").rstrip(".") if "." in s else str(int(s))
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    return s


def check_equality(a: str, b: str, judge=None) -> bool:
    """Equivalence of two answers: the judge backend's Yes/No when given, else normalised string equality."""
    if a is None or b is None:
        return False
    if judge is None:
        return normalize_math(a) == normalize_math(b)
    from lmlab.backend import GenerationConfig
    reply = judge.chat([[{"role": "user", "content": EQUALITY_TEMPLATE % {"expression1": a, "expression2": b}}]],
                       GenerationConfig(max_new_tokens=8))[0][0]
    return reply.strip().lower().startswith("yes")


def load_math(path: str) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"MATH data not found: {p}")
    if p.suffix == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            return [{"problem": r["Question"], "answer": r["Answer"], "type": r.get("type", "all")}
                    for r in csv.DictReader(f)]
    from lmlab.eval.runner import read_jsonl
    docs = read_jsonl(p)
    for d in docs:
        if "answer" not in d:
            d["answer"] = last_boxed(d["solution"])
    return docs


@EVAL_TASKS.register("math", help="MATH, simple-evals format; judge or normalised-match equivalence")
def math_task(path: str, judge=None, max_new_tokens: int = 1024, **_):
    from lmlab.backend import GenerationConfig
    from lmlab.eval.runner import Task

    def score(doc, outs):
        return {"acc": sum(check_equality(extract_answer(o), doc["answer"], judge) for o in outs) / len(outs)}
    return Task("math", load_math(path), "generate_until", lambda d: QUERY_TEMPLATE.format(problem=d["problem"]),
                score, "acc", category=lambda d: d.get("type", d.get("subject", "all")),
                gen=GenerationConfig(max_new_tokens=max_new_tokens))
