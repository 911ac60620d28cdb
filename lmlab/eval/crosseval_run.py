"""A small CrossEval run ("Law of the Weakest Link: Cross Capabilities of Large Language Models", Zhong et al.
2024, arXiv:2409.19768): score a model on single- and cross-capability prompts of our own, judged by
lmlab.eval.judge (1–5 Likert with rated reference responses, `Score: X/5` parsing with retries, rescaled to
1–100), then compare cross-capability scores with their two individual ones (the weakest-link statistic).

The paper has 7 individual capabilities and 7 pairs with 100 prompts each and human-rated references; this set
is much smaller: 3 capabilities (english writing, reasoning, coding) and their 3 pairs, a few prompts each,
each prompt with one reference response rated by us with a rationale, and a *programmatic gold*: a check that a
correct response passes (the number in the answer, the sentence count, the code's return value checked in
lmlab.eval.sandbox). The gold measures the judge's own quality: `judge_gold_agreement` is the AUC of the judge's
scores between gold-passing and gold-failing responses (ties 0.5), so a judge that cannot tell them apart
scores about 0.5.

Batching: `judge_batch` renders every judge prompt with `judge.build_judge_prompt`, generates the first
attempts in one backend call, parses them with `judge.parse_score`, and re-asks (sampled, new seed) only the
malformed ones, up to `retries` times — the semantics of `judge.judge`, one call per attempt instead of one per
prompt.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from lmlab.eval.judge import REQUIRED_SECTIONS, Judgement, Reference, build_judge_prompt, parse_score


def _numbers(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)]


def final_number_is(value: float) -> Callable[[str], bool]:
    """Gold: the last number in the response equals `value`."""
    def check(r: str) -> bool:
        n = _numbers(r)
        return bool(n) and abs(n[-1] - value) < 1e-9
    return check


def sentence_count_and(n: int, must: Sequence[str] = ()) -> Callable[[str], bool]:
    """Gold: exactly n sentences and every word of `must` present (case-insensitive)."""
    def check(r: str) -> bool:
        sents = [s for s in re.split(r"(?<=[.!?])\s+", r.strip()) if s.strip()]
        return len(sents) == n and all(re.search(rf"(?i)\b{re.escape(w)}\b", r) for w in must)
    return check


def extract_code(r: str) -> str:
    """The first ```python``` (or ```) block, else the text from the first 'def ' on."""
    m = re.search(r"```(?:python|py)?\s*\n(.*?)```", r, re.DOTALL)
    if m:
        return m.group(1)
    i = r.find("def ")
    return r[i:] if i >= 0 else ""


def code_returns(fn: str, args: tuple, expected) -> Callable[[str], bool]:
    """Gold: the response's code defines `fn` and fn(*args) == expected, checked by lmlab.eval.sandbox's check
    program (the call is made from the supervisor, so the code cannot fake the result)."""
    def check(r: str) -> bool:
        from lmlab.eval.sandbox import run_check

        code = extract_code(r)
        if f"def {fn}" not in code:
            return False
        test = f"def check(candidate):\n    assert candidate(*{args!r}) == {expected!r}\n"
        return run_check("", code, test, fn, timeout=5.0).passed
    return check


@dataclass
class CrossPrompt:
    id: str
    capabilities: tuple[str, ...]
    prompt: str
    reference: Reference
    gold: Optional[Callable[[str], bool]] = None


def _ref(text: str, score: int, why: str) -> Reference:
    return Reference(text, score, why)


PROMPTS: list[CrossPrompt] = [
    # english
    CrossPrompt("en1", ("english",), "Write exactly two sentences about the sea. Use the word 'blue'.",
                _ref("The sea is blue and wide. Waves roll onto the sand.", 5, "two sentences, uses 'blue'"),
                sentence_count_and(2, ["blue"])),
    CrossPrompt("en2", ("english",), "Write exactly three sentences about a cat. Use the word 'soft'.",
                _ref("My cat is soft. She sleeps all day. At night she plays.", 5, "three sentences, uses 'soft'"),
                sentence_count_and(3, ["soft"])),
    CrossPrompt("en3", ("english",), "Write exactly one sentence about rain that uses the word 'window'.",
                _ref("Rain tapped gently on the window.", 5, "one sentence with 'window'"),
                sentence_count_and(1, ["window"])),
    # reasoning
    CrossPrompt("re1", ("reasoning",), "Tom has 3 boxes with 4 apples in each box. How many apples does he have? "
                "End with the number.", _ref("3 boxes times 4 apples is 12. Answer: 12", 5, "correct: 12"),
                final_number_is(12)),
    CrossPrompt("re2", ("reasoning",), "A train leaves at 2 pm and the trip takes 3 hours. At what hour (pm) does it "
                "arrive? End with the number.", _ref("2 pm plus 3 hours is 5 pm. Answer: 5", 5, "correct: 5"),
                final_number_is(5)),
    CrossPrompt("re3", ("reasoning",), "Anna had 10 coins and gave away 4. How many coins does she have now? "
                "End with the number.", _ref("10 minus 4 is 6. Answer: 6", 5, "correct: 6"), final_number_is(6)),
    # coding
    CrossPrompt("co1", ("coding",), "Write a Python function add(a, b) that returns the sum of a and b.",
                _ref("```python\ndef add(a, b):\n    return a + b\n```", 5, "correct and minimal"),
                code_returns("add", (2, 3), 5)),
    CrossPrompt("co2", ("coding",), "Write a Python function square(x) that returns x times x.",
                _ref("```python\ndef square(x):\n    return x * x\n```", 5, "correct"), code_returns("square", (4,), 16)),
    CrossPrompt("co3", ("coding",), "Write a Python function is_even(n) that returns True when n is even.",
                _ref("```python\ndef is_even(n):\n    return n % 2 == 0\n```", 5, "correct"),
                code_returns("is_even", (7,), False)),
    # coding × reasoning
    CrossPrompt("cr1", ("coding", "reasoning"), "Write a Python function total() that returns how many legs 3 dogs "
                "and 2 birds have together.", _ref("```python\ndef total():\n    return 3 * 4 + 2 * 2\n```", 5,
                                                   "correct reasoning (12 + 4 = 16) in code"), code_returns("total", (), 16)),
    CrossPrompt("cr2", ("coding", "reasoning"), "Write a Python function cost() that returns the price of 5 pens at 2 "
                "dollars each minus a 3 dollar discount.", _ref("```python\ndef cost():\n    return 5 * 2 - 3\n```", 5,
                                                                "10 − 3 = 7, correct"), code_returns("cost", (), 7)),
    CrossPrompt("cr3", ("coding", "reasoning"), "Write a Python function minutes() that returns the number of minutes "
                "in 3 hours.", _ref("```python\ndef minutes():\n    return 3 * 60\n```", 5, "180, correct"),
                code_returns("minutes", (), 180)),
    # english × reasoning
    CrossPrompt("er1", ("english", "reasoning"), "In exactly two sentences, explain how many wheels 4 bicycles have. "
                "End with the number.", _ref("Each bicycle has 2 wheels. So 4 bicycles have 8", 5, "two sentences, 8"),
                lambda r: sentence_count_and(2)(r) and final_number_is(8)(r)),
    CrossPrompt("er2", ("english", "reasoning"), "In exactly two sentences, explain how many days are in 2 weeks. "
                "End with the number.", _ref("A week has 7 days. Two weeks have 14", 5, "two sentences, 14"),
                lambda r: sentence_count_and(2)(r) and final_number_is(14)(r)),
    CrossPrompt("er3", ("english", "reasoning"), "In exactly one sentence, say how many eggs are in 2 dozen. End with "
                "the number.", _ref("Two dozen eggs is 24", 5, "one sentence, 24"),
                lambda r: sentence_count_and(1)(r) and final_number_is(24)(r)),
    # coding × english
    CrossPrompt("ce1", ("coding", "english"), "Write a Python function greet(name) that returns 'Hello, ' followed by "
                "the name and '!'.", _ref("```python\ndef greet(name):\n    return 'Hello, ' + name + '!'\n```", 5,
                                          "exact string"), code_returns("greet", ("Ada",), "Hello, Ada!")),
    CrossPrompt("ce2", ("coding", "english"), "Write a Python function shout(word) that returns the word in capital "
                "letters.", _ref("```python\ndef shout(word):\n    return word.upper()\n```", 5, "correct"),
                code_returns("shout", ("hi",), "HI")),
    CrossPrompt("ce3", ("coding", "english"), "Write a Python function plural(noun) that adds the letter s to a noun.",
                _ref("```python\ndef plural(noun):\n    return noun + 's'\n```", 5, "correct"),
                code_returns("plural", ("cat",), "cats")),
]


def judge_batch(backend, items: Sequence[tuple[str, str, Sequence[Reference]]], retries: int = 2,
                sections: tuple[str, ...] = REQUIRED_SECTIONS, max_new_tokens: int = 768, seed: int = 0
                ) -> list[Judgement]:
    """`judge.judge` for many (prompt, response, references) at once: first attempts greedy in one call, then
    sampled re-asks of the malformed ones only (temperature 0.7, seed + attempt)."""
    from lmlab.backend import GenerationConfig

    msgs = [[{"role": "user", "content": build_judge_prompt(p, r, refs, sections=sections)}] for p, r, refs in items]
    raw: list[list[str]] = [[] for _ in items]
    score: list[Optional[float]] = [None] * len(items)
    err = [""] * len(items)
    todo = list(range(len(items)))
    for attempt in range(retries + 1):
        if not todo:
            break
        gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0 if attempt == 0 else 0.7,
                               seed=seed + attempt)
        replies = backend.chat([msgs[i] for i in todo], gen)
        nxt = []
        for i, row in zip(todo, replies):
            raw[i].append(row[0])
            score[i], err[i] = parse_score(row[0], sections)
            if score[i] is None:
                nxt.append(i)
        todo = nxt
    return [Judgement(score[i], len(raw[i]), raw[i], err[i]) for i in range(len(items))]


def auc(scores_pos: Sequence[float], scores_neg: Sequence[float]) -> float:
    """P(score of a positive > score of a negative), ties 0.5 (Mann–Whitney); NaN when a side is empty."""
    if not scores_pos or not scores_neg:
        return math.nan
    tot = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in scores_pos for b in scores_neg)
    return tot / (len(scores_pos) * len(scores_neg))


def weakest_link_gap(individual: dict[str, float], cross: dict[tuple[str, str], float]) -> float:
    """Mean over pairs of |cross − weaker| − |cross − stronger|: < 0 when cross scores sit nearer the weaker
    individual score (the paper's "Law of the Weakest Link"); NaN without a complete pair."""
    gaps = []
    for (a, b), c in cross.items():
        if a in individual and b in individual:
            weak, strong = sorted((individual[a], individual[b]))
            gaps.append(abs(c - weak) - abs(c - strong))
    return sum(gaps) / len(gaps) if gaps else math.nan


@dataclass
class CrossEvalResult:
    records: list[dict] = field(default_factory=list)      # id, capabilities, response, score, gold, attempts
    summary: dict = field(default_factory=dict)


def run_crosseval(model_backend, judge_backend, prompts: Sequence[CrossPrompt] = PROMPTS, max_new_tokens: int = 96,
                  temperature: float = 0.7, seed: int = 0, judge_retries: int = 2,
                  judge_sections: tuple[str, ...] = REQUIRED_SECTIONS, judge_max_new_tokens: int = 768
                  ) -> CrossEvalResult:
    """Responses of `model_backend` (one sample per prompt, batched), judged by `judge_backend` with each prompt's
    reference; gold checks where present. Summary: individual and cross means (1–100, from
    judge.aggregate), judge.weakest_link, weakest_link_gap for the judge's and for the gold scores, parse rate and
    judge_gold_agreement (AUC)."""
    from lmlab.backend import GenerationConfig
    from lmlab.eval.judge import aggregate, rescale, weakest_link

    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    responses = [row[0] for row in model_backend.chat([[{"role": "user", "content": p.prompt}] for p in prompts], gen)]
    js = judge_batch(judge_backend, [(p.prompt, r, [p.reference]) for p, r in zip(prompts, responses)],
                     retries=judge_retries, sections=judge_sections, max_new_tokens=judge_max_new_tokens, seed=seed)
    recs = []
    for p, r, j in zip(prompts, responses, js):
        gold = p.gold(r) if p.gold is not None else None
        recs.append({"id": p.id, "capabilities": list(p.capabilities), "response": r, "score": j.score,
                     "attempts": j.attempts, "gold": gold, "judge_error": j.error, "judge_raw": j.raw[-1][:400]})
    ind, cross = aggregate(recs)
    gold_recs = [{"capabilities": r["capabilities"], "score": 5.0 if r["gold"] else 1.0} for r in recs
                 if r["gold"] is not None]
    gind, gcross = aggregate(gold_recs)
    scored = [r for r in recs if r["score"] is not None and r["gold"] is not None]
    summary = {
        "individual": ind, "cross": {"×".join(k): v for k, v in cross.items()},
        "weakest_link": {k: v for k, v in weakest_link(ind, cross).items() if k != "rows"},
        "wl_gap": weakest_link_gap(ind, cross),
        "gold_individual": gind, "gold_cross": {"×".join(k): v for k, v in gcross.items()},
        "wl_gap_gold": weakest_link_gap(gind, gcross),
        "parse_rate": sum(r["score"] is not None for r in recs) / len(recs),
        "gold_pass_rate": sum(bool(r["gold"]) for r in recs) / max(1, sum(r["gold"] is not None for r in recs)),
        "judge_gold_agreement": auc([rescale(r["score"]) for r in scored if r["gold"]],
                                    [rescale(r["score"]) for r in scored if not r["gold"]]),
        "mean_individual": sum(ind.values()) / len(ind) if ind else math.nan,
        "mean_cross": sum(cross.values()) / len(cross) if cross else math.nan,
    }
    return CrossEvalResult(recs, summary)
