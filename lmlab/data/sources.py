"""Document sources: local .txt/.jsonl/.parquet files and directories, HF `datasets` on disk or by name.

`iter_documents(source, stats=...)` streams `Document(text, domain, key)`. Nothing is dropped silently:
every edge case is counted in `stats` (a `SourceStats`):

- empty files / empty text fields       -> `empty_documents` (skipped; nothing to train on)
- bytes that are not valid UTF-8        -> decoded one U+FFFD per bad byte; `non_utf8_files`, `non_utf8_bytes`
- lines longer than `max_line_chars`    -> the document is cut into pieces of at most that many characters;
                                           `huge_lines`, `split_pieces`
- lone surrogates (from JSON "\\ud800") -> replaced by U+FFFD; `invalid_surrogates`
- a UTF-8 byte-order mark               -> removed; `bom_files`
- malformed .jsonl lines                -> `malformed_lines`, `malformed_line_numbers` ("file:line")
- rows without a string `text_field`    -> `missing_field`, `missing_field_line_numbers`
- files with an unknown extension       -> `skipped_files`

`chars` counts characters read, `chars_out` characters emitted; they are equal (no text lost).
A source string is: a path (file or directory), several paths joined by ",", or `hf:NAME` for
`datasets.load_dataset` (optionally `hf:NAME:CONFIG?split=train&data_files=PATH`).

Each reader is registered in `lmlab.registry.DATA_SOURCES` (txt, jsonl, parquet, saved_dataset, hf; the
embedded corpus registers itself as "embedded"), and files are dispatched to them through the registry.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qsl

from lmlab.config import ConfigError
from lmlab.registry import DATA_SOURCES

MAX_LINE_CHARS = 100_000
MAX_RECORDED_LINES = 100  # line numbers kept per kind in stats (counts are always complete)
TEXT_EXT = (".txt", ".md", ".rst", ".text", ".py")
JSONL_EXT = (".jsonl", ".ndjson")
_BAD_BYTE = re.compile("[\udc80-\udcff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Document:
    text: str
    domain: str
    key: str  # identifies the original document; every piece of a split document shares it


@dataclass
class SourceStats:
    files: int = 0
    documents: int = 0  # documents emitted (pieces of split documents count one each)
    empty_documents: int = 0
    empty_locations: list[str] = field(default_factory=list)  # "file" or "file:line" of each empty one
    non_utf8_files: int = 0
    non_utf8_bytes: int = 0
    huge_lines: int = 0
    split_documents: int = 0
    split_pieces: int = 0
    malformed_lines: int = 0
    malformed_line_numbers: list[str] = field(default_factory=list)
    missing_field: int = 0
    missing_field_line_numbers: list[str] = field(default_factory=list)
    blank_lines: int = 0
    invalid_surrogates: int = 0
    bom_files: int = 0
    skipped_files: list[str] = field(default_factory=list)
    chars: int = 0
    chars_out: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def _note(self, kind: str, where: str) -> None:
        lst = getattr(self, kind)
        if len(lst) < MAX_RECORDED_LINES:
            lst.append(where)


# ------------------------------------------------------------------------------------------- helpers
def default_data_dir(data_dir: Optional[str | Path] = None) -> Path:
    return Path(data_dir or os.environ.get("LMLAB_DATA") or Path.home() / ".cache" / "lmlab").expanduser()


def hash_unit(key: str) -> float:
    """Deterministic hash of a string to [0, 1) (train/val split, deterministic selection)."""
    h = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


@contextlib.contextmanager
def cache_lock(path: Path):
    """Exclusive inter-process lock beside `path` while a cache entry is built."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    with open(lock, "a+") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        yield


def decode_bytes(raw: bytes, stats: SourceStats) -> tuple[str, int]:
    """UTF-8 decode; each invalid byte becomes one U+FFFD and is counted. Returns (text, bad bytes)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "surrogateescape")
        bad = len(_BAD_BYTE.findall(text))
        stats.non_utf8_bytes += bad
        return _BAD_BYTE.sub("\ufffd", text), bad


def bound_pieces(text: str, limit: int, stats: SourceStats) -> list[str]:
    """Cut a document whose longest line exceeds `limit` chars into pieces of <= limit chars.

    Normal lines are grouped up to the limit; an over-long line is cut into limit-sized chunks.
    `"".join(pieces) == text` always holds.
    """
    if len(text) <= limit:
        return [text]
    lines = text.splitlines(keepends=True)
    n_huge = sum(len(line) > limit for line in lines)
    if not n_huge:
        return [text]
    pieces: list[str] = []
    cur, n = [], 0
    for line in lines:
        if len(line) > limit:
            if cur:
                pieces.append("".join(cur))
                cur, n = [], 0
            pieces.extend(line[i:i + limit] for i in range(0, len(line), limit))
            continue
        if n + len(line) > limit:
            pieces.append("".join(cur))
            cur, n = [], 0
        cur.append(line)
        n += len(line)
    if cur:
        pieces.append("".join(cur))
    stats.huge_lines += n_huge
    stats.split_documents += 1
    stats.split_pieces += len(pieces)
    return pieces


def _clean_surrogates(text: str, stats: SourceStats) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        n = len(_SURROGATE.findall(text))
        stats.invalid_surrogates += n
        return _SURROGATE.sub("\ufffd", text)


def _emit(text: str, domain: str, key: str, stats: SourceStats, where: str, limit: int) -> Iterator[Document]:
    text = _clean_surrogates(text, stats)
    stats.chars += len(text)
    if not text:
        stats.empty_documents += 1
        stats._note("empty_locations", where)
        return
    for piece in bound_pieces(text, limit, stats):
        stats.documents += 1
        stats.chars_out += len(piece)
        yield Document(piece, domain, key)


def _strip_ext(name: str) -> tuple[str, str]:
    """'a.jsonl.gz' -> ('a', '.jsonl')."""
    if name.endswith(".gz"):
        name = name[:-3]
    stem, ext = os.path.splitext(name)
    return stem, ext.lower()


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())


# ----------------------------------------------------------------------------------------- readers
@DATA_SOURCES.register("txt", help="text files (.txt .md .rst .text .py, also .gz): one file = one document")
def iter_txt(path: Path, domain: str, stats: SourceStats, limit: int = MAX_LINE_CHARS,
             text_field: str = "text") -> Iterator[Document]:
    """A whole text file as one document (`text_field` is unused: a text file has no fields)."""
    stats.files += 1
    with _open_bytes(path) as fh:
        raw = fh.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
        stats.bom_files += 1
    text, bad = decode_bytes(raw, stats)
    stats.non_utf8_files += bad > 0
    yield from _emit(text, domain, text_key(text), stats, str(path), limit)


@DATA_SOURCES.register("jsonl", help="JSON lines (.jsonl .ndjson, also .gz): one document per row's text field")
def iter_jsonl(path: Path, domain: str, stats: SourceStats, text_field: str = "text",
               limit: int = MAX_LINE_CHARS) -> Iterator[Document]:
    stats.files += 1
    any_bad = False
    with _open_bytes(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
                stats.bom_files += 1
            line, bad = decode_bytes(raw, stats)
            any_bad |= bad > 0
            if not line.strip():
                stats.blank_lines += 1
                continue
            try:
                row = json.loads(line)
            except ValueError:
                stats.malformed_lines += 1
                stats._note("malformed_line_numbers", where)
                continue
            text = row.get(text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                stats.missing_field += 1
                stats._note("missing_field_line_numbers", where)
                continue
            yield from _emit(text, domain, text_key(text), stats, where, limit)
    stats.non_utf8_files += any_bad


@DATA_SOURCES.register("parquet", help="Parquet files: one document per row of the text column")
def iter_parquet(path: Path, domain: str, stats: SourceStats, text_field: str = "text",
                 limit: int = MAX_LINE_CHARS) -> Iterator[Document]:
    import pyarrow.parquet as pq

    stats.files += 1
    pf = pq.ParquetFile(str(path))
    names = pf.schema_arrow.names
    if text_field not in names:
        raise ConfigError(f"parquet file {str(path)!r} has no column {text_field!r} (columns: {', '.join(names)})")
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            row += 1
            if not isinstance(text, str):
                stats.missing_field += 1
                stats._note("missing_field_line_numbers", f"{path}:row{row}")
                continue
            yield from _emit(text, domain, text_key(text), stats, f"{path}:row{row}", limit)


def _iter_hf(ds: Any, name: str, domain: str, stats: SourceStats, text_field: str, limit: int) -> Iterator[Document]:
    cols = list(ds.column_names or [])
    if cols and text_field not in cols:
        raise ConfigError(f"dataset {name!r} has no column {text_field!r} (columns: {', '.join(cols)})")
    row = 0
    for batch in ds.iter(batch_size=1000):
        for text in batch[text_field]:
            row += 1
            if not isinstance(text, str):
                stats.missing_field += 1
                stats._note("missing_field_line_numbers", f"{name}:row{row}")
                continue
            yield from _emit(text, domain, text_key(text), stats, f"{name}:row{row}", limit)


@DATA_SOURCES.register("saved_dataset", help="a datasets `save_to_disk` directory (Dataset or DatasetDict)")
def iter_saved_dataset(path: Path, domain: str, stats: SourceStats, text_field: str = "text",
                       limit: int = MAX_LINE_CHARS) -> Iterator[Document]:
    """A `save_to_disk` Dataset or DatasetDict (all splits, in sorted split order)."""
    import datasets

    stats.files += 1
    obj = datasets.load_from_disk(str(path))
    parts = [(str(path), obj)] if isinstance(obj, datasets.Dataset) else \
        [(f"{path}[{s}]", obj[s]) for s in sorted(obj.keys())]
    for name, ds in parts:
        yield from _iter_hf(ds, name, domain, stats, text_field, limit)


def parse_hf_source(source: str) -> tuple[str, Optional[str], dict]:
    """'hf:NAME[:CONFIG][?k=v&k=v]' -> (name, config, kwargs)."""
    spec = source[3:] if source.startswith("hf:") else source
    spec, _, query = spec.partition("?")
    name, _, config = spec.partition(":")
    kwargs: dict[str, Any] = {k: {"true": True, "false": False}.get(v.lower(), v) for k, v in parse_qsl(query)}
    if "data_files" in kwargs and "," in kwargs["data_files"]:
        kwargs["data_files"] = kwargs["data_files"].split(",")
    return name, config or None, kwargs


@DATA_SOURCES.register("hf", help="hf:NAME[:CONFIG][?split=..&data_files=..]: datasets.load_dataset")
def iter_load_dataset(name: str, domain: str, stats: SourceStats, text_field: str = "text",
                      config: Optional[str] = None, limit: int = MAX_LINE_CHARS, **kwargs: Any) -> Iterator[Document]:
    """`datasets.load_dataset(name, config, split=..., **kwargs)`; hub names go through the HF cache."""
    import datasets

    kwargs.setdefault("split", "train")
    try:
        ds = datasets.load_dataset(name, config, **kwargs)
    except Exception as e:  # noqa: BLE001 - report one line naming the dataset
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"datasets.load_dataset({name!r}) failed: {first}") from None
    stats.files += 1
    if isinstance(ds, datasets.DatasetDict):
        for s in sorted(ds.keys()):
            yield from _iter_hf(ds[s], f"{name}[{s}]", domain, stats, text_field, limit)
    else:
        yield from _iter_hf(ds, name, domain, stats, text_field, limit)


_KIND_OF_EXT = {**{e: "txt" for e in TEXT_EXT}, **{e: "jsonl" for e in JSONL_EXT}, ".parquet": "parquet"}


def _iter_file(path: Path, domain: str, stats: SourceStats, text_field: str, limit: int) -> Iterator[Document]:
    _, ext = _strip_ext(path.name)
    if ext in JSONL_EXT + (".parquet",) and path.is_file() and path.stat().st_size == 0:
        stats.files += 1
        stats._note("empty_locations", str(path))  # no records: nothing to read (a .txt counts as an empty document)
        return
    kind = "saved_dataset" if is_saved_dataset(path) else _KIND_OF_EXT.get(ext)
    if kind is None:
        stats.skipped_files.append(str(path))
        return
    yield from DATA_SOURCES.get(kind)(path, domain, stats, text_field=text_field, limit=limit)


def _walk(root: Path) -> Iterator[Path]:
    """Files and saved datasets under root, sorted; saved-dataset dirs are not descended into."""
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if is_saved_dataset(entry):
                yield entry
            else:
                yield from _walk(entry)
        else:
            yield entry


def source_domain(path: Path) -> str:
    return _strip_ext(path.name)[0] or "default"


def dir_domain(rel: Path) -> str:
    """Domain of a file found inside a source directory: its first-level sub-directory; at the top level,
    a record file's stem (.jsonl, .parquet, saved dataset), or "default" for text files (one document each)."""
    if len(rel.parts) > 1:
        return rel.parts[0]
    stem, ext = _strip_ext(rel.name)
    return "default" if ext in TEXT_EXT else (stem or "default")


def split_sources(source: str) -> list[str]:
    if source.startswith("hf:") or Path(source).expanduser().exists() or "," not in source:
        return [source]
    return [s.strip() for s in source.split(",") if s.strip()]


def iter_documents(source: str | Path, text_field: str = "text", stats: Optional[SourceStats] = None,
                   max_line_chars: int = MAX_LINE_CHARS, domain: Optional[str] = None,
                   dataset_kwargs: Optional[dict] = None) -> Iterator[Document]:
    """Stream documents from a source string (see module doc). Domains: a file's stem; inside a directory,
    see `dir_domain`; `hf:` datasets: "default"."""
    stats = stats if stats is not None else SourceStats()
    for src in split_sources(str(source)):
        if src.startswith("hf:"):
            name, config, kw = parse_hf_source(src)
            kw.update(dataset_kwargs or {})
            yield from iter_load_dataset(name, domain or "default", stats, text_field, config, max_line_chars, **kw)
            continue
        path = Path(src).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data source {src!r} does not exist")
        if path.is_file() or is_saved_dataset(path):
            yield from _iter_file(path, domain or source_domain(path), stats, text_field, max_line_chars)
            continue
        for f in _walk(path):
            yield from _iter_file(f, domain or dir_domain(f.relative_to(path)), stats, text_field, max_line_chars)


def fingerprint_source(source: str) -> str:
    """Cheap identity of a local source for cache keys: paths, sizes and mtimes (hf: names as given)."""
    parts = []
    for src in split_sources(source):
        p = Path(src).expanduser()
        if src.startswith("hf:") or not p.exists():
            parts.append(src)
            continue
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            st = f.stat()
            parts.append(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.blake2b("\n".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()

