"""GSM8K (Cobbe et al.) in the lm-evaluation-harness style: "Question: ...\\nAnswer:" with k solved train
examples in front, generation stopped at the next "Question:"; two extractions, both taking the LAST match:
strict "#### <number>" and flexible "any number-looking token".

Data: the public JSONL {question, answer} where answer ends in "#### <number>" (no wheel ships it).
"""
from __future__ import annotations

import re
from typing import Optional

from lmlab.registry import EVAL_TASKS

STRICT = r"#### (\-?[0-9\.\,]+)"
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"


def gold_answer(answer: str) -> str:
    return _clean(answer.split("####")[-1])


def _clean(s: str) -> str:
    return s.strip().replace(",", "").replace("$", "").rstrip(".")


def extract(response: str, mode: str = "flexible") -> Optional[str]:
    ms = re.findall(STRICT if mode == "strict" else FLEXIBLE, response)
    if not ms:
        return None
    last = ms[-1]
    if isinstance(last, tuple):
        last = next(x for x in last if x)
    return _clean(last)


@EVAL_TASKS.register("gsm8k", help="GSM8K, lm-eval-harness few-shot, strict and flexible extraction")
def gsm8k_task(path: str, fewshot_path: Optional[str] = None, n_shot: int = 5, max_new_tokens: int = 256, **_):
    from lmlab.backend import GenerationConfig
    from lmlab.eval.runner import Task, read_jsonl
    docs = read_jsonl(path)
    shots = "".join(f"Question: {e['question']}\nAnswer: {e['answer']}\n\n"
                    for e in (read_jsonl(fewshot_path)[:n_shot] if fewshot_path else []))

    def score(doc, outs):
        g = gold_answer(doc["answer"])
        return {"exact_match_strict": sum(extract(o, "strict") == g for o in outs) / len(outs),
                "exact_match_flexible": sum(extract(o, "flexible") == g for o in outs) / len(outs)}
    return Task("gsm8k", docs, "generate_until", lambda d: f"{shots}Question: {d['question']}\nAnswer:", score,
                "exact_match_flexible", chat=False,
                gen=GenerationConfig(max_new_tokens=max_new_tokens, stop=["Question:", "</s>", "<|im_end|>"]))
