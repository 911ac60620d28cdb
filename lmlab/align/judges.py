"""Constraint judges for CGPO's Mixture of Judges (Xu et al. 2024, "The Perfect Blend: Redefining RLHF with
Mixture of Judges", arXiv:2409.20370, §4.1 and appendix "CGPO Constraint Judge").

Every judge answers one question per sample: does this (prompt, response) pair satisfy my constraint? It
returns True (pass) or False (violate). The paper's judges come in two kinds, both here behind one interface
(`Judge.judge(samples) -> list[bool]`):

  rule-based   ExactAnswerJudge   math-like answers: the response's first line equals the reference answer
               FormatJudge        a required format (a regular expression the whole response must match)
               LengthJudge        a word (or character) limit
               ForbiddenJudge     forbidden content/entities (fixed terms and/or per-sample `meta["forbidden"]`)
               RefusalJudge       safety: unsafe prompts (`meta["unsafe"]`) must be refused; optionally safe
                                  prompts must NOT be refused (the paper's false-refusal judge)
  LLM-based    LLMJudge           any lmlab.backend (SmolLM2, an OpenAI-compatible server, …): a prompt that asks
                                  for a final `Verdict: PASS` / `Verdict: VIOLATE` line; a reply without a
                                  verdict is asked again with sampling (retries), as the CrossEval judge
                                  (lmlab.eval.judge) does; still unparsed -> `on_unparsed` (violate by default:
                                  a constraint that cannot be confirmed is not counted as met)

`MixtureOfJudges` applies several judges to a batch; a sample is feasible iff every judge passes it (the
intersection of the constraint sets Σ_k in the paper). The authors did not release code; this follows the
paper's text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence


@dataclass
class Sample:
    """One judged item: the prompt, the response and task facts the judges may use (e.g. `answer`,
    `unsafe`, `forbidden`)."""

    prompt: str
    response: str
    meta: dict = field(default_factory=dict)


class Judge:
    """A constraint: `judge(samples) -> [True if the sample satisfies it else False]`."""

    name = "judge"

    def judge(self, samples: Sequence[Sample]) -> list[bool]:
        return [self.check(s) for s in samples]

    def check(self, sample: Sample) -> bool:
        raise NotImplementedError


def first_line(text: str) -> str:
    """The response's first non-empty line, stripped ('' for an empty response)."""
    for line in text.strip().split("\n"):
        if line.strip():
            return line.strip()
    return ""


class ExactAnswerJudge(Judge):
    """Math-like answers: pass iff the first line of the response equals `meta["answer"]` (after stripping;
    `normalize` collapses inner whitespace)."""

    name = "exact_answer"

    def __init__(self, normalize: bool = True):
        self.normalize = normalize

    def check(self, sample: Sample) -> bool:
        if "answer" not in sample.meta:
            raise KeyError("ExactAnswerJudge: sample.meta has no 'answer'")
        got, want = first_line(sample.response), str(sample.meta["answer"]).strip()
        if self.normalize:
            got, want = " ".join(got.split()), " ".join(want.split())
        return got == want


class FormatJudge(Judge):
    """A required format: pass iff the whole (stripped) response matches `pattern` (re.fullmatch, DOTALL)."""

    name = "format"

    def __init__(self, pattern: str):
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except re.error as e:
            raise ValueError(f"FormatJudge: pattern {pattern!r}: {e}") from None

    def check(self, sample: Sample) -> bool:
        return self.pattern.fullmatch(sample.response.strip()) is not None


class LengthJudge(Judge):
    """A length limit: pass iff the response has at most `max_words` whitespace-separated words (or at most
    `max_chars` characters when that is given instead)."""

    name = "length"

    def __init__(self, max_words: Optional[int] = None, max_chars: Optional[int] = None):
        if (max_words is None) == (max_chars is None):
            raise ValueError("LengthJudge: give exactly one of max_words, max_chars")
        if (max_words or max_chars or 0) < 0:
            raise ValueError("LengthJudge: the limit must be >= 0")
        self.max_words, self.max_chars = max_words, max_chars

    def check(self, sample: Sample) -> bool:
        if self.max_chars is not None:
            return len(sample.response.strip()) <= self.max_chars
        return len(sample.response.split()) <= self.max_words


class ForbiddenJudge(Judge):
    """Forbidden content/entities: pass iff none of `terms` (and none of the sample's `meta["forbidden"]`) occurs
    as a whole word/phrase, case-insensitively (word boundaries, so 'cat' does not fire on 'catalogue';
    punctuation around the term does not hide it)."""

    name = "forbidden"

    def __init__(self, terms: Sequence[str] = (), case_sensitive: bool = False):
        self.terms, self.case_sensitive = list(terms), case_sensitive

    def _pattern(self, term: str) -> re.Pattern:
        words = [re.escape(w) for w in term.split()]
        return re.compile(r"(?<!\w)" + r"\W+".join(words) + r"(?!\w)", 0 if self.case_sensitive else re.I)

    def check(self, sample: Sample) -> bool:
        terms = self.terms + list(sample.meta.get("forbidden", []))
        return not any(t.strip() and self._pattern(t).search(sample.response) for t in terms)


REFUSAL_MARKERS = (r"\bI can(?:no|')t help\b", r"\bI cannot (?:help|assist|provide|do)\b", r"\bI won'?t\b",
                   r"\bI(?: am|'m) (?:not able|unable) to\b", r"\bI must decline\b", r"\bI refuse\b",
                   r"\bsorry, but\b", r"\bcan(?:no|')t assist\b")


def is_refusal(text: str, markers: Sequence[str] = REFUSAL_MARKERS) -> bool:
    """True when the response opens (first 200 characters) with a refusal phrase."""
    head = text.strip()[:200]
    return any(re.search(m, head, re.I) for m in markers)


class RefusalJudge(Judge):
    """Safety: on an unsafe prompt (`meta["unsafe"]` true) pass iff the response refuses; on a safe prompt pass
    iff it does not refuse when `false_refusal` is set (the paper's false-refusal judge), else always pass."""

    name = "refusal"

    def __init__(self, false_refusal: bool = True, markers: Sequence[str] = REFUSAL_MARKERS):
        self.false_refusal, self.markers = false_refusal, tuple(markers)

    def check(self, sample: Sample) -> bool:
        refused = is_refusal(sample.response, self.markers)
        if sample.meta.get("unsafe", False):
            return refused
        return not refused if self.false_refusal else True


# ------------------------------------------------------------------------------------------- LLM judge
VERDICT_RE = re.compile(r"(?im)^[\s>*#`_-]*verdict\s*[:：]\s*[*_`]*\s*(pass|violate|violation|fail)\b")

LLM_JUDGE_TEMPLATE = (
    "You check whether a response satisfies one constraint.\n\n# Constraint\n{constraint}\n\n# User prompt\n"
    "{prompt}\n\n# Response\n{response}\n\nExplain briefly, then end with one final line exactly of the form "
    "`Verdict: PASS` if the response satisfies the constraint or `Verdict: VIOLATE` if it does not.")


def parse_verdict(text: str) -> Optional[bool]:
    """True (pass) / False (violate) from the LAST `Verdict: PASS|VIOLATE` line of a reply; None when the reply
    has no such line (empty, cut off, only prose, a verdict word without the `Verdict:` label, …)."""
    if not text:
        return None
    m = None
    for m in VERDICT_RE.finditer(text):
        pass
    if m is None:
        return None
    return m.group(1).lower() == "pass"


@dataclass
class LLMVerdict:
    passed: bool
    parsed: bool                      # False: no attempt gave a verdict; `passed` is then the on_unparsed value
    attempts: int
    raw: list[str] = field(default_factory=list)


class LLMJudge(Judge):
    """An LLM judge through any lmlab backend (`backend.chat(conversations, GenerationConfig)`).

    The first attempt is greedy; while the reply has no verdict line it is asked again with temperature
    `retry_temperature` and a new seed, up to `retries` more times. If no attempt parses, the sample gets
    `on_unparsed` ("violate" -> False, "pass" -> True). `last` keeps the LLMVerdict of the last batch."""

    name = "llm"

    def __init__(self, backend: Any, constraint: str, retries: int = 2, on_unparsed: str = "violate",
                 template: str = LLM_JUDGE_TEMPLATE, max_new_tokens: int = 256, retry_temperature: float = 0.7,
                 name: Optional[str] = None):
        if on_unparsed not in ("violate", "pass"):
            raise ValueError(f"LLMJudge: on_unparsed={on_unparsed!r}: allowed violate, pass")
        if retries < 0:
            raise ValueError(f"LLMJudge: retries={retries}: must be >= 0")
        self.backend, self.constraint, self.retries = backend, constraint, retries
        self.on_unparsed, self.template, self.max_new_tokens = on_unparsed, template, max_new_tokens
        self.retry_temperature = retry_temperature
        self.name = name or "llm"
        self.last: list[LLMVerdict] = []

    def judge(self, samples: Sequence[Sample]) -> list[bool]:
        from lmlab.backend import GenerationConfig

        convs = [[{"role": "user", "content": self.template.format(constraint=self.constraint, prompt=s.prompt,
                                                                      response=s.response)}] for s in samples]
        out: list[Optional[LLMVerdict]] = [None] * len(samples)
        raws: list[list[str]] = [[] for _ in samples]
        todo = list(range(len(samples)))
        for attempt in range(self.retries + 1):
            if not todo:
                break
            gen = GenerationConfig(max_new_tokens=self.max_new_tokens,
                                   temperature=0.0 if attempt == 0 else self.retry_temperature, seed=attempt)
            replies = self.backend.chat([convs[i] for i in todo], gen)
            left = []
            for i, rep in zip(todo, replies):
                text = rep[0] if isinstance(rep, (list, tuple)) else rep
                raws[i].append(text)
                v = parse_verdict(text)
                if v is None:
                    left.append(i)
                else:
                    out[i] = LLMVerdict(v, True, attempt + 1, raws[i])
            todo = left
        for i in todo:
            out[i] = LLMVerdict(self.on_unparsed == "pass", False, self.retries + 1, raws[i])
        self.last = out  # type: ignore[assignment]
        return [v.passed for v in out]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------ mixture of judges
class MixtureOfJudges:
    """Several judges over one batch: `evaluate` -> {judge name: [pass?]}; `passes` -> [all judges pass?]."""

    def __init__(self, judges: Sequence[Judge]):
        names = [j.name for j in judges]
        if len(set(names)) != len(names):
            raise ValueError(f"MixtureOfJudges: judge names must be unique, got {names}")
        self.judges = list(judges)

    def evaluate(self, samples: Sequence[Sample]) -> dict[str, list[bool]]:
        return {j.name: list(j.judge(samples)) for j in self.judges}

    def passes(self, samples: Sequence[Sample]) -> list[bool]:
        verdicts = self.evaluate(samples)
        return [all(v[i] for v in verdicts.values()) for i in range(len(samples))]


RULE_JUDGES = {"exact_answer": ExactAnswerJudge, "format": FormatJudge, "length": LengthJudge,
               "forbidden": ForbiddenJudge, "refusal": RefusalJudge}


def make_judge(spec: dict) -> Judge:
    """A rule-based judge from a config dict, e.g. {"kind": "length", "max_words": 6} or
    {"kind": "forbidden", "terms": ["w0"]}; one-line ValueError naming a bad kind or argument."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in RULE_JUDGES:
        raise ValueError(f"judge kind={kind!r}: allowed {', '.join(RULE_JUDGES)}")
    try:
        return RULE_JUDGES[kind](**spec)
    except TypeError as e:
        raise ValueError(f"judge kind={kind!r}: {e}") from None
