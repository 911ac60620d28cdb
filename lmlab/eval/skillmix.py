"""Skill-Mix grading and generation (Yu et al. 2023, arXiv:2310.17567; Zhao et al. 2024, "Can Models Learn Skill
Composition from Examples?", arXiv:2409.19808).

Grading follows the papers' rubric in points: one per requested skill, one for the topic; a text gets *full
marks* when every point is earned (the papers' headline "ratio of full marks"; their length-limit point is
left out here, since the grammar and the models below write at most a few sentences). A skill with a
programmatic checker (lmlab.data.skillmix_data.CATALOGUE) is graded by it; a skill without one is graded by a
judge backend (a yes/no question with the skill's definition, re-asked while the reply has no verdict; a reply
that never gives one fails the point and is counted in `judge_unparsed`).

`generate_with_rejection` writes training texts with any backend (e.g. SmolLM2) and keeps only those that pass
every checker — the papers filter GPT-4 texts by a GPT-4 grader instead.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

from lmlab.data.skillmix_data import CATALOGUE, mentions, prompt


@dataclass
class Grade:
    skills: dict[str, bool]
    topic: bool
    judge_unparsed: int = 0
    info: dict = field(default_factory=dict)

    @property
    def points(self) -> int:
        return sum(self.skills.values()) + int(self.topic)

    @property
    def full_marks(self) -> bool:
        return self.topic and all(self.skills.values())


JUDGE_TEMPLATE = ("Does the text below use this language skill?\nSkill: {name} — {definition}\nText: {text}\n"
                  "Answer Yes or No.")


def parse_yes_no(reply: str) -> Optional[bool]:
    """True/False from the first 'yes'/'no' word of a reply ('Yes.', 'Answer: no'), None when there is none
    ('no idea' is not a verdict) or when it opens 'yes or no'."""
    if not reply:
        return None
    m = re.search(r"(?i)\b(yes|no)\b(?!\s+(?:idea|one|clue|way|doubt))", reply)
    if m is None:
        return None
    rest = reply[m.end():m.end() + 8].lower()
    if re.match(r"\s*(or|/)\s*(yes|no)\b", rest):
        return None
    return m.group(1).lower() == "yes"


def judge_skill(backend, text: str, skill: str, retries: int = 2, max_new_tokens: int = 8) -> Optional[bool]:
    """Ask `backend` whether `text` uses `skill`; greedy first, then sampled re-asks while no verdict parses."""
    from lmlab.backend import GenerationConfig

    s = CATALOGUE[skill]
    msg = [{"role": "user", "content": JUDGE_TEMPLATE.format(name=s.name.replace("_", " "),
                                                             definition=s.definition, text=text)}]
    for attempt in range(retries + 1):
        gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0 if attempt == 0 else 0.7, seed=attempt)
        v = parse_yes_no(backend.chat([msg], gen)[0][0])
        if v is not None:
            return v
    return None


def grade(text: str, skills: Sequence[str], topic: str, judge=None) -> Grade:
    """Points for one text. Skills without a checker need `judge` (a Backend); without one they raise."""
    out, unparsed = {}, 0
    for s in skills:
        if s not in CATALOGUE:
            raise KeyError(f"skill {s!r} is not in the catalogue")
        chk = CATALOGUE[s].checker
        if chk is not None:
            out[s] = bool(chk(text))
            continue
        if judge is None:
            raise ValueError(f"skill {s!r} has no checker: pass a judge backend to grade it")
        v = judge_skill(judge, text, s)
        unparsed += v is None
        out[s] = bool(v)
    return Grade(out, mentions(text, topic), unparsed)


def success_rates(grades: Sequence[Grade]) -> dict[str, float]:
    """full_marks (fraction of texts with every point), skill_rate (fraction of skill points earned), topic_rate."""
    n = len(grades)
    if n == 0:
        return {"full_marks": float("nan"), "skill_rate": float("nan"), "topic_rate": float("nan")}
    pts = sum(len(g.skills) for g in grades)
    return {"full_marks": sum(g.full_marks for g in grades) / n,
            "skill_rate": sum(sum(g.skills.values()) for g in grades) / max(pts, 1),
            "topic_rate": sum(g.topic for g in grades) / n}


def generate_with_rejection(backend, skill_names: Sequence[str], ks: Sequence[int], topics: Sequence[str], n: int,
                            samples: int = 4, max_new_tokens: int = 80, seed: int = 0) -> tuple[list[dict], dict]:
    """Up to n examples {prompt, text, skills, topic, k} written by `backend` and kept only when every checker
    passes (skills must have checkers). Each request is sampled `samples` times in one batched call; returns
    (kept examples, {"requests", "candidates", "kept"})."""
    from lmlab.backend import GenerationConfig

    bad = [s for s in skill_names if CATALOGUE[s].checker is None]
    if bad:
        raise ValueError(f"generate_with_rejection: skill {bad[0]!r} has no checker")
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        k = rng.choice(list(ks))
        reqs.append((tuple(rng.sample(list(skill_names), k)), rng.choice(list(topics))))
    msgs = [[{"role": "user", "content": "Write a short text (at most 4 sentences) about " + t + " that uses these "
              "skills: " + "; ".join(f"{s.replace('_', ' ')} ({CATALOGUE[s].definition})" for s in sk) + "."}]
            for sk, t in reqs]
    outs = backend.chat(msgs, GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.8, n=samples, seed=seed))
    kept = []
    for (sk, t), row in zip(reqs, outs):
        for text in row:
            if grade(text, sk, t).full_marks:
                kept.append({"prompt": prompt(sk, t), "text": text.strip(), "skills": sk, "topic": t, "k": len(sk)})
                break
    return kept, {"requests": len(reqs), "candidates": len(reqs) * samples, "kept": len(kept)}
