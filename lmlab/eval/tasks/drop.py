"""DROP (Dua et al.): exact match and bag-of-tokens F1 as in the official evaluation script, applied the way
simple-evals does (the LAST "Answer: ..." of the response against every "|"-separated reference; best wins).

Normalisation of a span: lower-case, split on spaces and hyphens, strip punctuation (not from numbers), drop
articles, numbers to float form ("2.0" == "2"). A multi-span answer is a list of spans; predicted and gold spans
are paired by an optimal assignment of per-span F1 (a pair scores 0 unless the gold span's numbers, if any,
appear in the predicted one), and F1 is the mean over the larger side.

Data: JSONL rows {passage, question, answers} (answers: list of strings or one "|"-separated string).
"""
from __future__ import annotations

import itertools
import re
import string
from typing import Optional, Union

import numpy as np

from lmlab.eval.tasks.common import ANSWER_PATTERN, last_match
from lmlab.registry import EVAL_TASKS

Answer = Union[str, list, tuple]
_PUNCT = set(string.punctuation)


def _is_number(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def _normalize_token(tok: str) -> str:
    tok = tok.lower()
    if not _is_number(tok):
        tok = "".join(ch for ch in tok if ch not in _PUNCT)
    if _is_number(tok):
        tok = str(float(tok))
    tok = re.sub(r"\b(a|an|the)\b", " ", tok)
    return " ".join(tok.split())


def normalize_answer(text: str) -> str:
    parts = [_normalize_token(t) for t in re.split(" |-", text)]
    return " ".join(p for p in parts if p.strip()).strip()


def _bags(answer: Answer) -> tuple[list[str], list[set[str]]]:
    spans = list(answer) if isinstance(answer, (list, tuple)) else [answer]
    norm = [normalize_answer(s) for s in spans]
    return norm, [set(n.split()) for n in norm]


def _f1(pred: set[str], gold: set[str]) -> float:
    inter = len(gold & pred)
    p = 1.0 if not pred else inter / len(pred)
    r = 1.0 if not gold else inter / len(gold)
    return 0.0 if p == 0.0 and r == 0.0 else 2 * p * r / (p + r)


def _numbers_match(gold: set[str], pred: set[str]) -> bool:
    g = {w for w in gold if _is_number(w)}
    return not g or bool(g & {w for w in pred if _is_number(w)})


def _pair_scores(pred: list[set[str]], gold: list[set[str]]) -> np.ndarray:
    s = np.zeros((len(gold), len(pred)))
    for i, g in enumerate(gold):
        for j, p in enumerate(pred):
            if _numbers_match(g, p):
                s[i, j] = _f1(p, g)
    return s


def _align(pred: list[set[str]], gold: list[set[str]]) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment
    s = _pair_scores(pred, gold)
    rows, cols = linear_sum_assignment(-s)
    best = np.zeros(max(len(gold), len(pred)))
    for r, c in zip(rows, cols):
        best[r] = max(best[r], s[r, c])
    return best


def naive_align(pred: list[set[str]], gold: list[set[str]]) -> float:
    """Mean of the best one-to-one pairing, by trying every pairing (reference for `_align`)."""
    s = _pair_scores(pred, gold)
    n = max(len(gold), len(pred))
    padded = np.zeros((n, n))
    padded[: s.shape[0], : s.shape[1]] = s
    return max(sum(padded[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n))) / n


def drop_em_f1(predicted: Answer, gold: Answer) -> tuple[float, float]:
    """(exact match, F1) of one prediction against one gold answer; F1 rounded to 2 decimals as upstream."""
    p_norm, p_bags = _bags(predicted)
    g_norm, g_bags = _bags(gold)
    em = float(set(p_norm) == set(g_norm) and len(p_norm) == len(g_norm))
    f1 = round(float(np.mean(_align(p_bags, g_bags))), 2)
    return em, f1


def drop_metric(response: str, references: Answer) -> dict[str, float]:
    """Best EM/F1 of the extracted answer over the references ("a|b" or a list)."""
    refs = references.split("|") if isinstance(references, str) else list(references)
    pred = extract_answer(response)
    ems, f1s = zip(*(drop_em_f1(pred, r) for r in refs)) if pred is not None else ((0.0,), (0.0,))
    return {"em": max(ems), "f1": max(f1s)}


def extract_answer(response: str) -> Optional[str]:
    got = last_match(ANSWER_PATTERN, response)
    return got.strip() if got is not None else None


PROMPT = ("You will be asked to read a passage and answer a question.\n{fewshot}# Your Task\n\n---\n{passage}\n\n"
          "{question}\n\nThink step by step, then write a line of the form \"Answer: $ANSWER\" at the end of your "
          "response.")


@EVAL_TASKS.register("drop", help="DROP, reading comprehension: exact match and bag-of-tokens F1")
def drop_task(path: str, fewshot_path: Optional[str] = None, n_shot: int = 3, max_new_tokens: int = 512, **_):
    from lmlab.backend import GenerationConfig
    from lmlab.eval.runner import Task, read_jsonl
    docs = read_jsonl(path)
    shots = ""
    if fewshot_path:
        ex = read_jsonl(fewshot_path)[:n_shot]
        shots = "Some examples of passages and Q&A are provided below.\n\n" + "".join(
            f"# Example\n---\n{e['passage']}\n\n{e['question']}\n\nAnswer: "
            f"{e['answers'] if isinstance(e['answers'], str) else e['answers'][0]}\n\n" for e in ex)

    def score(doc, outs):
        ms = [drop_metric(o, doc["answers"]) for o in outs]
        return {"em": float(np.mean([m["em"] for m in ms])), "f1": float(np.mean([m["f1"] for m in ms]))}
    return Task("drop", docs, "generate_until",
                lambda d: PROMPT.format(fewshot=shots, passage=d["passage"], question=d["question"]), score, "f1",
                gen=GenerationConfig(max_new_tokens=max_new_tokens))
