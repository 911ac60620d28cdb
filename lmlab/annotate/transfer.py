"""Data in and out of the platform.

- import: JSONL, CSV or a `datasets` folder; chat rows (messages / conversations / prompt+completion, read by
  `lmlab.align.data.parse_chat`) become pairs to re-annotate, preference rows (prompt + chosen/rejected, or
  prompt + completion_a/completion_b) become comparisons to judge. One transaction: a bad row stores nothing.
- export: the approved pairs as SFT chat JSONL ({"messages": [user, assistant], ...}) and the approved pairwise
  judgements as preference JSONL ({"prompt", "chosen", "rejected", ...}), the two layouts `lmlab align sft` and
  `lmlab align dpo|rm` read; and a Hugging Face `datasets` folder (parquet per config + README.md dataset
  card with languages, counts and licence) that `datasets.load_dataset(folder, "sft")` opens.
- backup / restore: every table as JSON lines with the schema revision in a header, read in one transaction
  (a consistent snapshot) and written atomically; restore fills an empty database (of either kind, so it
  also moves a SQLite database to PostgreSQL) in one transaction and checks the row counts.
"""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import random
from pathlib import Path

from sqlalchemy import DateTime, delete, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from lmlab.align.data import parse_chat, parse_preference
from lmlab.io import atomic_dir, atomic_write_bytes, atomic_write_text

from . import ops
from .db import TABLES, Comparison, Pair, Preference, Rating, User, current_revision, sessions, upgrade

BACKUP_FORMAT = "lmlab-annotate-backup"


# ------------------------------------------------------------------------------------------- import
def read_rows(path: str | Path) -> list[tuple[str, dict]]:
    """(where, row) for every row of a .jsonl / .csv file or a `datasets` folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        import datasets

        if (path / "dataset_info.json").exists() or (path / "state.json").exists() \
                or (path / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(path))
        if isinstance(ds, datasets.DatasetDict):
            return [(f"{path}[{split}]:{i}", dict(r)) for split in ds for i, r in enumerate(ds[split], 1)]
        return [(f"{path}:{i}", dict(r)) for i, r in enumerate(ds, 1)]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [(f"{path}:{i}", dict(r)) for i, r in enumerate(csv.DictReader(f), 2)]
    if path.suffix in (".jsonl", ".json"):
        from lmlab.align.data import read_jsonl

        return [(f"{path}:{i}", r) for i, r in enumerate(read_jsonl(path), 1)]
    raise ValueError(f"{path}: expected .jsonl, .csv or a datasets folder")


def _prompt_of(msgs: list[dict], where: str) -> str:
    if not msgs:
        raise ValueError(f"{where}: no prompt")
    if len(msgs) == 1:
        return msgs[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs)


def import_rows(s: Session, rows: list[tuple[str, dict]], language: str | None = None, source: str = "import",
                seed: int = 0) -> dict:
    """Add the rows as seed pairs / comparisons; returns {"pairs": n, "comparisons": m}."""
    rng = random.Random(seed)
    n_pairs = n_cmp = 0
    for where, row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object")
        lang = row.get("language") or row.get("lang") or language
        if not lang:
            raise ValueError(f"{where}: no 'language' field and no --language given")
        try:
            if "completion_a" in row and "completion_b" in row:
                ops.add_comparison(s, lang, str(row.get("prompt", "")), str(row["completion_a"]),
                                   str(row["completion_b"]), source)
                n_cmp += 1
            elif "chosen" in row and "rejected" in row:
                p = parse_preference(row, where)
                a, b = (p["chosen"], p["rejected"]) if rng.random() < 0.5 else (p["rejected"], p["chosen"])
                ops.add_comparison(s, lang, _prompt_of(p["prompt"], where), a, b, source)
                n_cmp += 1
            else:
                msgs = parse_chat(row, where)
                if msgs[-1]["role"] != "assistant":
                    raise ValueError(f"{where}: the last message must be the assistant's")
                ops.add_seed_pair(s, lang, _prompt_of(msgs[:-1], where), msgs[-1]["content"], source)
                n_pairs += 1
        except ops.Invalid as e:
            raise ValueError(f"{where}: {e}") from None
    return {"pairs": n_pairs, "comparisons": n_cmp}


# ------------------------------------------------------------------------------------------- export
def sft_rows(s: Session, languages=None) -> list[dict]:
    q = select(Pair).where(Pair.status == "approved")
    if languages:
        q = q.where(Pair.language.in_(languages))
    return [{"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.completion}],
             "language": p.language, "id": p.id, "kind": p.kind, "source": p.source, "revision": p.revision}
            for p in s.scalars(q.order_by(Pair.id))]


def preference_rows(s: Session, languages=None) -> list[dict]:
    q = select(Preference, Comparison).join(Comparison).where(Preference.status == "approved",
                                                              Preference.choice.in_(("a", "b")))
    if languages:
        q = q.where(Comparison.language.in_(languages))
    out = []
    for pref, c in s.execute(q.order_by(Preference.id)):
        chosen, rejected = (c.completion_a, c.completion_b) if pref.choice == "a" else (c.completion_b, c.completion_a)
        out.append({"prompt": c.prompt, "chosen": chosen, "rejected": rejected, "language": c.language,
                    "comparison_id": c.id, "reason": pref.reason})
    return out


def rating_rows(s: Session, languages=None) -> list[dict]:
    q = select(Rating, Pair).join(Pair, Rating.pair_id == Pair.id).where(Pair.status != "draft")
    if languages:
        q = q.where(Pair.language.in_(languages))
    return [{"pair_id": p.id, "language": p.language, "revision": r.revision, "score": r.score, "reason": r.reason}
            for r, p in s.execute(q.order_by(Rating.id))]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def export_jsonl(s: Session, out_dir: str | Path, languages=None) -> dict:
    """sft.jsonl, preferences.jsonl and ratings.jsonl in out_dir (atomic writes); returns the counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rows in (("sft", sft_rows(s, languages)), ("preferences", preference_rows(s, languages)),
                       ("ratings", rating_rows(s, languages))):
        atomic_write_text(out / f"{name}.jsonl", jsonl(rows))
        counts[name] = len(rows)
    return counts


def dataset_card(counts: dict, languages: dict, license: str, name: str) -> str:
    langs = sorted(languages)
    front = ["---", f"license: {license}", "language:", *[f"- {x.split('-')[0]}" for x in langs],
             "task_categories:", "- text-generation", "pretty_name: " + json.dumps(name), "configs:"]
    for cfg in ("sft", "preferences", "ratings"):
        front += [f"- config_name: {cfg}", "  data_files:", "  - split: train", f"    path: data/{cfg}.parquet"]
    front.append("---")
    table = "\n".join(f"| {x} | {ops.language_name(x)} | {n['sft']} | {n['preferences']} | {n['ratings']} |"
                      for x, n in sorted(languages.items()))
    return "\n".join(front) + f"""

# {name}

Prompt/completion pairs and human feedback collected with `lmlab annotate` (an Aya-style annotation
platform): original annotations and re-annotations of templated seed data, approved by a reviewer, and
pairwise judgements approved by a reviewer.

- `sft`: approved pairs as chat messages (`messages`: user prompt, assistant completion), with `language`,
  `kind` (original or seed = a re-annotated seed pair), `source` and `revision`.
- `preferences`: approved pairwise judgements as `prompt`, `chosen`, `rejected` (ties are left out).
- `ratings`: 1-5 scores with the rater's reason (`pair_id`, `revision`, `score`, `reason`).

Totals: {counts['sft']} SFT rows, {counts['preferences']} preference rows, {counts['ratings']} ratings.

| code | language | sft | preferences | ratings |
|---|---|---|---|---|
{table}

Licence: {license}.
"""


def export_hf(s: Session, folder: str | Path, license: str = "apache-2.0", name: str = "lmlab annotations",
              languages=None) -> dict:
    """A Hugging Face `datasets` folder: data/{sft,preferences,ratings}.parquet and README.md (dataset card)."""
    import datasets

    rows = {"sft": sft_rows(s, languages), "preferences": preference_rows(s, languages),
            "ratings": rating_rows(s, languages)}
    counts = {k: len(v) for k, v in rows.items()}
    per_lang: dict[str, dict] = {}
    for k, v in rows.items():
        for r in v:
            per_lang.setdefault(r["language"], {"sft": 0, "preferences": 0, "ratings": 0})[k] += 1
    features = {
        "sft": datasets.Features({"messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
                                  "language": datasets.Value("string"), "id": datasets.Value("int64"),
                                  "kind": datasets.Value("string"), "source": datasets.Value("string"),
                                  "revision": datasets.Value("int64")}),
        "preferences": datasets.Features({k: datasets.Value("string") for k in ("prompt", "chosen", "rejected",
                                                                                "language", "reason")}
                                         | {"comparison_id": datasets.Value("int64")}),
        "ratings": datasets.Features({"pair_id": datasets.Value("int64"), "language": datasets.Value("string"),
                                      "revision": datasets.Value("int64"), "score": datasets.Value("int64"),
                                      "reason": datasets.Value("string")}),
    }
    with atomic_dir(folder) as tmp:
        (tmp / "data").mkdir()
        for k, v in rows.items():
            datasets.Dataset.from_list(v, features=features[k]).to_parquet(str(tmp / "data" / f"{k}.parquet"))
        (tmp / "README.md").write_text(dataset_card(counts, per_lang, license, name), encoding="utf-8")
    return counts


# ------------------------------------------------------------------------------------ backup/restore
def _value(v):
    return v.isoformat() if isinstance(v, dt.datetime) else v


def backup(engine: Engine, path: str | Path) -> dict:
    """Write every table to `path` (JSON lines; gzip when it ends in .gz); returns {table: rows}."""
    path = Path(path)
    counts, lines = {}, []
    factory = sessions(engine)
    with factory() as s:
        if engine.dialect.name == "postgresql":
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        for model in TABLES:
            cols = [c.name for c in model.__table__.columns]
            rows = s.execute(select(*model.__table__.columns).order_by(model.__table__.c.id)).all()
            counts[model.__tablename__] = len(rows)
            lines += [json.dumps({"table": model.__tablename__, "row": {c: _value(v) for c, v in zip(cols, r)}},
                                 ensure_ascii=False) for r in rows]
        revision = current_revision(engine)
    header = json.dumps({"format": BACKUP_FORMAT, "schema": revision, "tables": counts,
                         "created_at": dt.datetime.now(dt.timezone.utc).isoformat()})
    data = ("\n".join([header, *lines]) + "\n").encode("utf-8")
    atomic_write_bytes(path, gzip.compress(data) if path.suffix == ".gz" else data)
    return counts


def _read_backup(path: Path) -> tuple[dict, list[dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = io.StringIO(raw.decode("utf-8")).read().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("format") != BACKUP_FORMAT:
        raise ValueError(f"{path}: not an lmlab annotate backup (no header line)")
    rows = []
    for i, line in enumerate(lines[1:], 2):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: invalid JSON ({e.msg}); the backup is damaged") from None
    return header, rows


def restore(engine: Engine, path: str | Path, force: bool = False) -> dict:
    """Load a backup into the database at `engine` (migrated to the newest schema first). The database must
    hold no users or pairs unless `force`, which deletes everything first. One transaction."""
    path = Path(path)
    header, rows = _read_backup(path)
    upgrade(engine, header["schema"] or "head")
    by_name = {m.__tablename__: m for m in TABLES}
    factory = sessions(engine)
    with factory() as s, s.begin():
        s.connection(execution_options={"write": True})
        if not force and (s.scalar(select(func.count(User.id))) or s.scalar(select(func.count(Pair.id)))):
            raise ValueError("the target database is not empty (use --force to replace its contents)")
        for model in reversed(TABLES):
            s.execute(delete(model))
        for model in TABLES:
            table = model.__table__
            dtcols = {c.name for c in table.columns if isinstance(c.type, DateTime)}
            batch = [{k: (dt.datetime.fromisoformat(v) if k in dtcols and v is not None else v)
                      for k, v in r["row"].items()} for r in rows if r["table"] == model.__tablename__]
            unknown = {r["table"] for r in rows} - set(by_name)
            if unknown:
                raise ValueError(f"{path}: unknown table {sorted(unknown)[0]!r}")
            if batch:
                s.execute(table.insert(), batch)
        if engine.dialect.name == "postgresql":   # serial columns continue after the restored ids
            for model in TABLES:
                t = model.__tablename__
                s.execute(text(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), "
                               f"COALESCE((SELECT MAX(id) FROM {t}), 0) + 1, false)"))
        got = {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in TABLES}
        if got != header["tables"]:
            raise ValueError(f"{path}: restored counts {got} differ from the backup's {header['tables']}")
    upgrade(engine)
    return got
