"""Hidden-information reading tasks for debate (Khan et al. 2024, "Debating with More Persuasive LLMs Leads to More
Truthful Answers", arXiv:2402.06782): a passage that only the debaters see, a question, one correct and one
plausible wrong answer.

The paper uses QuALITY stories; this is a small stand-in built from the embedded corpus (a Bible translation,
one chapter = one document, one verse per line). Each task is built with exact provenance:

  passage     `n_verses` consecutive verses of one chapter (document index, first verse line)
  answer      a word that occurs exactly once in the passage: its character span (start, end) in the passage
  question    "Which word fills the blank in '<w_-k ... w_-1> ___ <w_+1 ...>'?" — a short window around the
              answer (not the whole verse, so a judge's prior knowledge of the text helps little)
  distractor  a word that follows the same preceding word somewhere else in the corpus (so it fits the blank
              grammatically), never occurs in the passage, and has the answer's capitalisation; its provenance is
              (document index, character offset) of that occurrence

A debater arguing for the distractor therefore cannot produce a verified quote that contains it.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

WORD_RE = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
STOPWORDS = frozenset("""a an the and or but of to in on at by for with from as is was are were be been it its he
she they them his her their him we us our you your i me my this that these those who whom which what when where
there then than so not no nor all any some one two three will shall would should may might can could have has had
do did does said says say unto upon into out up down over him himself them themselves thee thou thy ye if also
now even very like let make made give gave go went come came put take took""".split())


@dataclass
class ReadingTask:
    """One task. `answers` = (correct, wrong); provenance in `answer_span` and `distractor_source`."""
    id: str
    passage: str
    question: str
    correct: str
    wrong: str
    answer_span: tuple[int, int]                 # passage[start:end] == correct
    distractor_source: tuple[int, int]           # (document index, char offset of the distractor in it)
    info: dict = field(default_factory=dict)

    @property
    def answers(self) -> tuple[str, str]:
        return self.correct, self.wrong


def _words(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0), m.start(), m.end()) for m in WORD_RE.finditer(text)]


def _followers(docs: Sequence[str]) -> dict[str, list[tuple[str, int, int]]]:
    """lower(previous word) -> [(following word, doc index, char offset), ...] over the corpus, in order."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    for d, doc in enumerate(docs):
        ws = _words(doc)
        for (a, _, _), (b, s, _) in zip(ws, ws[1:]):
            out.setdefault(a.lower(), []).append((b, d, s))
    return out


def build_reading_tasks(docs: Sequence[str], n: int, seed: int = 0, n_verses: int = 3, window_before: int = 3,
                        window_after: int = 2, max_passage_chars: int = 420,
                        n_passage_docs: Optional[int] = None) -> list[ReadingTask]:
    """`n` tasks from documents with one verse (sentence group) per line; deterministic in `seed`.

    Candidates are content words (not stopwords, ≥ 4 letters) that occur once in the passage and have at least
    `window_before` words before them in their verse; the distractor is chosen among corpus words that follow
    the same previous word, by frequency (most frequent first; ties by first occurrence). Passages come from
    docs[:n_passage_docs] (all by default), distractors from every document. Raises ValueError when the corpus
    cannot give `n` tasks."""
    rng = random.Random(seed)
    foll = _followers(docs)
    order = list(range(len(docs) if n_passage_docs is None else min(n_passage_docs, len(docs))))
    rng.shuffle(order)
    tasks: list[ReadingTask] = []
    for d in order:
        lines = [ln for ln in docs[d].split("\n") if ln.strip()]
        if len(lines) < n_verses:
            continue
        start = rng.randrange(0, len(lines) - n_verses + 1)
        passage = "\n".join(lines[start:start + n_verses])
        if len(passage) > max_passage_chars:
            continue
        pw = _words(passage)
        lowers = [w.lower() for w, _, _ in pw]
        counts = {w: lowers.count(w) for w in set(lowers)}
        cands = []
        for i, (w, s, e) in enumerate(pw):
            if len(w) < 4 or w.lower() in STOPWORDS or counts[w.lower()] != 1 or i < window_before:
                continue
            line_start = passage.rfind("\n", 0, s) + 1
            if pw[i - window_before][1] < line_start:       # the window stays inside the answer's verse
                continue
            prev = pw[i - 1][0].lower()
            opts: dict[str, list[tuple[int, int]]] = {}
            for b, dd, off in foll.get(prev, []):
                if dd == d or b.lower() in counts or b.lower() in STOPWORDS or len(b) < 3:
                    continue
                if b[0].isupper() != w[0].isupper():
                    continue
                opts.setdefault(b, []).append((dd, off))
            if opts:
                best = max(opts, key=lambda b: (len(opts[b]), -opts[b][0][0], -opts[b][0][1]))
                cands.append((i, best, opts[best][0]))
        if not cands:
            continue
        i, wrong, src = cands[rng.randrange(len(cands))]
        w, s, e = pw[i]
        before = " ".join(x for x, _, _ in pw[i - window_before:i])
        after = " ".join(x for x, _, _ in pw[i + 1:i + 1 + window_after] if x)
        question = f"Which word fills the blank in the passage: \"{before} ___ {after}\"?".replace(" \"?", "\"?")
        tasks.append(ReadingTask(id=f"doc{d}-v{start}-w{i}", passage=passage, question=question, correct=w,
                                 wrong=wrong, answer_span=(s, e), distractor_source=src,
                                 info={"doc": d, "first_line": start}))
        if len(tasks) == n:
            return tasks
    raise ValueError(f"reading tasks: the corpus gave only {len(tasks)} of the {n} tasks asked for")


def bible_reading_tasks(n: int, seed: int = 0, domain: str = "bible_bbe", split: str = "val",
                        data_dir: Optional[str] = None, **kw) -> list[ReadingTask]:
    """Tasks from one embedded Bible translation (chapters of `split`; distractors from the whole translation)."""
    from lmlab.data.embedded import embedded_texts

    t = embedded_texts([domain], data_dir)[domain]
    docs = t[split] + [d for k in ("train", "val") if k != split for d in t[k]]
    return build_reading_tasks(docs, n, seed, n_passage_docs=len(t[split]), **kw)
