"""CrossEval judging ("Law of the Weakest Link", Zhong et al. 2024): an LLM judge scores a response 1–5 against a
rubric, seeing up to three reference responses with their human ratings and rationales; the judge must write
the required sections and end with `Score: X/5`, and a reply that does not parse is asked again (retries).
Scores are rescaled to 1–100 by (s − 1)·24.75 + 1.

Aggregation: individual-capability prompts give one score per capability; cross-capability prompts (pairs such
as coding × reasoning) give one per pair. The weakest-link statistic places each pair's cross score relative to
its two individual scores: the paper's finding is that it sits near (often below) the weaker one.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

RUBRIC = {
    1: "Fails the task: irrelevant, incorrect or harmful; ignores key instructions.",
    2: "Attempts the task but has major errors or omissions; most instructions not met.",
    3: "Partially correct: the main request is addressed with noticeable errors, gaps or weak reasoning.",
    4: "Good: correct and helpful with minor issues in completeness, precision or style.",
    5: "Excellent: fully correct, complete, well reasoned and clearly presented; meets every instruction.",
}
REQUIRED_SECTIONS = ("Strengths", "Weaknesses", "Comparison with references")
SCORE_RE = re.compile(r"(?i)score\s*[:：]\s*\**\s*(\d+(?:\.\d+)?)\s*\**\s*/\s*5\b")


@dataclass
class Reference:
    response: str
    score: int
    rationale: str = ""


@dataclass
class Judgement:
    score: Optional[float]          # 1–5, None when no attempt parsed
    attempts: int
    raw: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def rescaled(self) -> float:
        return rescale(self.score) if self.score is not None else math.nan


def rescale(s: float) -> float:
    """1–5 Likert to 1–100: (s − 1)·24.75 + 1."""
    return (s - 1.0) * 24.75 + 1.0


def build_judge_prompt(prompt: str, response: str, references: list[Reference] = (), rubric: dict = RUBRIC,
                       sections: tuple[str, ...] = REQUIRED_SECTIONS) -> str:
    refs = list(references)[:3]
    parts = ["You are an expert evaluator. Rate the response to the user prompt on a 1-5 scale using the rubric.",
             "", "# Rubric"] + [f"{k}: {v}" for k, v in sorted(rubric.items())]
    if refs:
        parts += ["", "# Reference responses, rated by human experts"]
        for i, r in enumerate(refs, 1):
            parts += [f"## Reference {i} (rated {r.score}/5)", r.response.strip()]
            if r.rationale:
                parts.append(f"Rationale for the rating: {r.rationale.strip()}")
    parts += ["", "# User prompt", prompt.strip(), "", "# Response to evaluate", response.strip(), "",
              "# Output format", "Write these sections, in this order, each as a markdown heading:"]
    parts += [f"### {s}" for s in sections]
    parts += ["Then end with a final line exactly of the form `Score: X/5` where X is an integer from 1 to 5."]
    return "\n".join(parts)


def parse_score(text: str, sections: tuple[str, ...] = REQUIRED_SECTIONS) -> tuple[Optional[float], str]:
    """(score, "") from the LAST `Score: X/5` of a judge reply, or (None, reason) if the reply is malformed:
    no score line, a score outside 1..5, or a required section missing."""
    if not text or not text.strip():
        return None, "empty reply"
    m = None
    for m in SCORE_RE.finditer(text):
        pass
    if m is None:
        return None, "no 'Score: X/5' line"
    s = float(m.group(1))
    if not 1.0 <= s <= 5.0:
        return None, f"score {m.group(1)} outside 1..5"
    missing = [s_ for s_ in sections if not re.search(rf"(?im)^\s*#*\s*\**{re.escape(s_)}\**\s*:?", text)]
    if missing:
        return None, f"missing section(s): {', '.join(missing)}"
    return s, ""


def judge(backend, prompt: str, response: str, references: list[Reference] = (), retries: int = 3,
          sections: tuple[str, ...] = REQUIRED_SECTIONS, max_new_tokens: int = 768) -> Judgement:
    """Ask `backend` to judge; re-ask (sampling, new seed) up to `retries` more times while the reply is malformed."""
    from lmlab.backend import GenerationConfig
    msg = [{"role": "user", "content": build_judge_prompt(prompt, response, references, sections=sections)}]
    raw, err = [], ""
    for attempt in range(retries + 1):
        gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0 if attempt == 0 else 0.7,
                               seed=attempt)
        reply = backend.chat([msg], gen)[0][0]
        raw.append(reply)
        score, err = parse_score(reply, sections)
        if score is not None:
            return Judgement(score, attempt + 1, raw)
    return Judgement(None, retries + 1, raw, err)


def aggregate(records: list[dict], rescaled: bool = True) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """records: {"capabilities": ["coding"] or ["coding", "reasoning"], "score": 1–5 or None}.
    Returns (individual: capability -> mean, cross: sorted pair -> mean); unparsed scores are left out."""
    ind: dict[str, list[float]] = {}
    cross: dict[tuple[str, str], list[float]] = {}
    for r in records:
        s = r["score"]
        if s is None or (isinstance(s, float) and math.isnan(s)):
            continue
        s = rescale(s) if rescaled else float(s)
        caps = list(r["capabilities"])
        if len(caps) == 1:
            ind.setdefault(caps[0], []).append(s)
        elif len(caps) == 2:
            cross.setdefault(tuple(sorted(caps)), []).append(s)
        else:
            raise ValueError(f"capabilities must name 1 or 2 capabilities, got {caps}")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {k: mean(v) for k, v in ind.items()}, {k: mean(v) for k, v in cross.items()}


def weakest_link(individual: dict[str, float], cross: dict[tuple[str, str], float]) -> dict:
    """Where each cross-capability score falls relative to its two individual scores.

    rows: pair, weak, strong, cross, relative position (cross − weak)/(strong − weak)
    summary: fraction of pairs below the weaker / between / above the stronger; fraction closer to the weaker
    than to the stronger; mean |cross − weak| and mean |cross − strong|."""
    rows = []
    for (a, b), c in sorted(cross.items()):
        if a not in individual or b not in individual:
            continue
        weak, strong = sorted((individual[a], individual[b]))
        pos = (c - weak) / (strong - weak) if strong > weak else math.nan
        rows.append({"pair": (a, b), "weak": weak, "strong": strong, "cross": c, "position": pos})
    n = len(rows)
    if n == 0:
        return {"rows": [], "n": 0}
    frac = lambda f: sum(1 for r in rows if f(r)) / n  # noqa: E731
    return {
        "rows": rows, "n": n,
        "below_weak": frac(lambda r: r["cross"] < r["weak"]),
        "between": frac(lambda r: r["weak"] <= r["cross"] <= r["strong"]),
        "above_strong": frac(lambda r: r["cross"] > r["strong"]),
        "closer_to_weak": frac(lambda r: abs(r["cross"] - r["weak"]) < abs(r["cross"] - r["strong"])),
        "mean_dev_weak": sum(abs(r["cross"] - r["weak"]) for r in rows) / n,
        "mean_dev_strong": sum(abs(r["cross"] - r["strong"]) for r in rows) / n,
    }
