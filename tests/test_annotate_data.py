"""Data layer of `lmlab annotate` on SQLite and on PostgreSQL (when reachable): the migrated schema equals the
models, edits keep every revision and never overwrite a concurrent edit, forms posted twice store one row,
drafts are private, import/export round trips (JSONL, CSV, datasets; the exports parse with lmlab.align.data),
backup/restore (also SQLite -> PostgreSQL), progress and leaderboard counts."""
from __future__ import annotations

import csv
import json

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm.exc import StaleDataError

from lmlab.align.data import load_chat, load_preferences
from lmlab.annotate import ops, transfer
from lmlab.annotate.db import (TABLES, Base, Comparison, Pair, Preference, Rating, Revision, current_revision,
                               read, upgrade, write)

from _annotate_db import fast_argon2, make_db  # noqa: F401 - fast_argon2 is an autouse fixture


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    yield from make_db(request.param, tmp_path)


def _people(factory):
    with write(factory) as s:
        a = ops.create_user(s, "amina", "password-a", "annotator", "en,ar")
        b = ops.create_user(s, "bo", "password-b", "annotator", "en,ar")
        r = ops.create_user(s, "rev", "password-r", "reviewer", "en,ar")
    return a, b, r


def test_schema_is_the_models_and_upgrade_is_idempotent(db):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine, _ = db()
    upgrade(engine)                       # a second upgrade changes nothing
    assert current_revision(engine) == "0001"
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert diff == []


def test_edits_are_revisions_and_concurrent_edits_conflict(db):
    engine, factory = db()
    a, b, _ = _people(factory)
    with write(factory) as s:
        pid = ops.add_seed_pair(s, "ar", "ترجم: In the beginning", "في البدء", "test").id
    with read(factory) as s:
        v0 = s.get(Pair, pid).version
    with write(factory) as s:
        ops.edit_pair(s, a, pid, v0, "ترجم إلى العربية: In the beginning", "في البدء خلق الله", True)
    with pytest.raises(ops.Conflict) as e, write(factory) as s:      # b edited the version a had replaced
        ops.edit_pair(s, b, pid, v0, "ترجم", "نص آخر", True)
    assert e.value.current.completion == "في البدء خلق الله" and e.value.submitted["completion"] == "نص آخر"
    with read(factory) as s:
        p = s.get(Pair, pid)
        revs = s.scalars(select(Revision).where(Revision.pair_id == pid).order_by(Revision.number)).all()
        assert (p.revision, p.status, p.last_editor_id) == (2, "submitted", a.id)
        assert [(r.number, r.completion, r.author_id) for r in revs] == [(1, "في البدء", None),
                                                                         (2, "في البدء خلق الله", a.id)]
        v1 = p.version
    with write(factory) as s:             # the same edit posted again after it was stored: a no-op
        ops.edit_pair(s, a, pid, v0, "ترجم إلى العربية: In the beginning", "في البدء خلق الله", True)
    # the race the explicit check cannot see: a stale object flushed after another transaction committed
    stale_s = factory()
    stale = stale_s.get(Pair, pid)
    with write(factory) as s:
        ops.edit_pair(s, b, pid, v1, "ترجم", "تعديل بو", True)
    stale.completion = "silent overwrite"
    with pytest.raises((StaleDataError, OperationalError)):
        stale_s.flush()
    stale_s.rollback()
    stale_s.close()
    with read(factory) as s:
        assert s.get(Pair, pid).completion == "تعديل بو"
        assert s.scalar(select(func.count(Revision.id)).where(Revision.pair_id == pid)) == 3


def test_a_form_posted_twice_stores_one_row(db):
    engine, factory = db()
    a, b, _ = _people(factory)
    for _ in range(2):
        with write(factory) as s:
            pid = ops.create_pair(s, a, "en", "Name a colour.", "Blue.", client_key="k" * 16).id
    with write(factory) as s:
        cid = ops.add_comparison(s, "en", "p", "x", "y", "t").id
    for _ in range(2):
        with write(factory) as s:
            ops.rate_pair(s, b, pid, 4, "fine", client_key="r" * 16)
        with write(factory) as s:
            ops.prefer(s, b, cid, "a", "x is better", client_key="q" * 16)
    with read(factory) as s:
        assert [s.scalar(select(func.count()).select_from(t)) for t in (Pair, Revision, Rating, Preference)] == \
            [1, 1, 1, 1]
    with pytest.raises(ops.Invalid), write(factory) as s:     # someone else's key is not theirs to reuse
        ops.create_pair(s, b, "en", "p", "c", client_key="k" * 16)


def test_drafts_are_private_and_the_rules_hold(db):
    engine, factory = db()
    a, b, r = _people(factory)
    with write(factory) as s:
        draft = ops.create_pair(s, a, "en", "draft prompt", "draft answer", submit=False)
        sub = ops.create_pair(s, a, "ar", "سؤال", "جواب")
    for fn in (lambda s: ops.visible_pair(s, b, draft.id),
               lambda s: ops.edit_pair(s, b, draft.id, draft.version, "x", "y"),
               lambda s: ops.rate_pair(s, b, draft.id, 3, "r"),
               lambda s: ops.review_pair(s, r, draft.id, draft.version, True)):
        with pytest.raises(ops.Denied) as e, write(factory) as s:
            fn(s)
        assert e.value.status == 404
    with read(factory) as s:
        assert ops.search_pairs(s, b, q="draft")[1] == 0 and ops.search_pairs(s, a, q="draft")[1] == 1
    with pytest.raises(ops.Denied), write(factory) as s:      # not in her languages
        ops.create_pair(s, a, "fr", "Bonjour ?", "Salut.")
    with pytest.raises(ops.Denied), write(factory) as s:
        ops.rate_pair(s, a, sub.id, 5, "mine")
    with pytest.raises(ops.Denied), write(factory) as s:
        ops.review_pair(s, a, sub.id, sub.version, True)      # annotators do not review
    with write(factory) as s:
        ops.review_pair(s, r, sub.id, sub.version, True, "good")
    with pytest.raises(ops.Conflict), write(factory) as s:    # approved: the form's version is gone
        ops.edit_pair(s, b, sub.id, sub.version, "x", "y")
    with read(factory) as s:
        v = s.get(Pair, sub.id).version
    with pytest.raises(ops.Denied), write(factory) as s:
        ops.edit_pair(s, b, sub.id, v, "x", "y")              # approved pairs are frozen
    for bad in (dict(score=0), dict(score=6)):
        with pytest.raises(ops.Invalid), write(factory) as s:
            ops.rate_pair(s, b, sub.id, bad["score"], "r")
    with pytest.raises(ops.Invalid), write(factory) as s:
        ops.create_pair(s, a, "en", "   ", "c")


def _fill(factory, tmp_path):
    """Imported seeds (JSONL, CSV), an original pair, a re-annotation, ratings, judgements, reviews."""
    a, b, r = _people(factory)
    src = tmp_path / "seeds.jsonl"
    src.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in [
        {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
         "language": "en"},
        {"prompt": "ما عاصمة مصر؟", "completion": "القاهرة", "language": "ar"},
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "language": "en"},
        {"prompt": "قل مرحبا", "completion_a": "مرحبا", "completion_b": "لا", "language": "ar"},
    ]) + "\n")
    with (tmp_path / "seeds.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["prompt", "completion"])
        w.writeheader()
        w.writerow({"prompt": "Capital of France?", "completion": "Paris"})
    with write(factory) as s:
        got = transfer.import_rows(s, transfer.read_rows(src), source="t")
        got2 = transfer.import_rows(s, transfer.read_rows(tmp_path / "seeds.csv"), language="en", source="t")
    assert got == {"pairs": 2, "comparisons": 2} and got2 == {"pairs": 1, "comparisons": 0}
    with read(factory) as s:
        seed_en = s.scalar(select(Pair).where(Pair.prompt == "What is 2+2?"))
        seed_ar = s.scalar(select(Pair).where(Pair.language == "ar"))
        cmps = {c.language: c for c in s.scalars(select(Comparison))}
    with write(factory) as s:
        orig = ops.create_pair(s, a, "ar", "اكتب جملة <b>عن</b> الشمس", "الشمس <script>x</script> نجم.")
        ops.edit_pair(s, b, seed_en.id, seed_en.version, "What is two plus two?", "Two plus two is four.")
        ops.rate_pair(s, b, orig.id, 5, "ممتاز")
        ops.rate_pair(s, a, seed_ar.id, 3, "قصير")
        p_en = ops.prefer(s, a, cmps["en"].id, "a" if cmps["en"].completion_a == "Hi!" else "b", "polite")
        p_ar = ops.prefer(s, b, cmps["ar"].id, "a" if cmps["ar"].completion_a == "مرحبا" else "b", "يجيب")
    with write(factory) as s:
        for pid in (orig.id, seed_en.id):
            ops.review_pair(s, r, pid, s.get(Pair, pid).version, True, "ok")
        ops.review_preference(s, r, p_en.id, p_en.version, True)
        ops.review_preference(s, r, p_ar.id, p_ar.version, True)
    return a, b, r


def test_import_export_round_trip_through_align_loaders(db, tmp_path):
    import datasets

    engine, factory = db()
    _fill(factory, tmp_path)
    with read(factory) as s:
        counts = transfer.export_jsonl(s, tmp_path / "out")
        hf = transfer.export_hf(s, tmp_path / "hf", license="cc-by-4.0", name="test set")
    assert counts == hf == {"sft": 2, "preferences": 2, "ratings": 2}
    chats = load_chat(tmp_path / "out" / "sft.jsonl")
    assert sorted(c[1]["content"] for c in chats) == ["Two plus two is four.", "الشمس <script>x</script> نجم."]
    assert all([m["role"] for m in c] == ["user", "assistant"] for c in chats)
    prefs = load_preferences(tmp_path / "out" / "preferences.jsonl")
    assert sorted((p["prompt"][0]["content"], p["chosen"], p["rejected"]) for p in prefs) == \
        [("Say hi", "Hi!", "No."), ("قل مرحبا", "مرحبا", "لا")]
    sft = datasets.load_dataset(str(tmp_path / "hf"), "sft", split="train")
    assert sorted(r["messages"][1]["content"] for r in sft) == sorted(c[1]["content"] for c in chats)
    pref = datasets.load_dataset(str(tmp_path / "hf"), "preferences", split="train")
    assert sorted(pref["chosen"]) == ["Hi!", "مرحبا"]
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "- ar\n" in card and "- en\n" in card and "| ar | Arabic | 1 | 1 | 2 |" in card
    # a datasets folder imports back
    ds_dir = tmp_path / "ds"
    datasets.Dataset.from_list([{"prompt": "Hola", "completion": "¡Hola!", "language": "es"}]).save_to_disk(str(ds_dir))
    with write(factory) as s:
        assert transfer.import_rows(s, transfer.read_rows(ds_dir)) == {"pairs": 1, "comparisons": 0}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "completion": "y"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: no 'language'"), write(factory) as s:
        transfer.import_rows(s, transfer.read_rows(bad))


def test_progress_and_leaderboard(db, tmp_path):
    engine, factory = db()
    _fill(factory, tmp_path)
    with read(factory) as s:
        prog = {r["language"]: r for r in ops.progress(s)}
        board = {r["username"]: r for r in ops.leaderboard(s)}
    assert {k: prog["en"][k] for k in ("total", "seed", "approved", "reannotated", "ratings", "judgements")} == \
        {"total": 2, "seed": 1, "approved": 1, "reannotated": 1, "ratings": 0, "judgements": 1}
    assert {k: prog["ar"][k] for k in ("total", "seed", "approved", "ratings", "judgements")} == \
        {"total": 2, "seed": 1, "approved": 1, "ratings": 2, "judgements": 1}
    assert board["amina"] == {"username": "amina", "originals": 1, "edits": 0, "ratings": 1, "judgements": 1,
                              "approved": 1, "points": 2.0}
    assert board["bo"]["edits"] == 1 and board["bo"]["points"] == 2.0 and "rev" not in board


def test_backup_restore_and_move_sqlite_to_this_database(db, tmp_path):
    from lmlab.annotate.db import open_db

    src_engine, src = open_db(f"sqlite:///{tmp_path / 'src.db'}")
    _fill(src, tmp_path)
    counts = transfer.backup(src_engine, tmp_path / "b.jsonl.gz")
    engine = db.engine()
    assert transfer.restore(engine, tmp_path / "b.jsonl.gz") == counts
    def dump(e):
        from lmlab.annotate.db import sessions
        with sessions(e)() as s:
            return {m.__tablename__: [tuple(r) for r in s.execute(select(*m.__table__.columns).order_by(m.__table__.c.id))]
                    for m in TABLES}
    a, b = dump(src_engine), dump(engine)
    assert {k: len(v) for k, v in b.items()} == counts and a.keys() == b.keys()
    for k in a:      # equal rows (datetimes compared as instants)
        assert [[x.timestamp() if hasattr(x, "timestamp") else x for x in r] for r in a[k]] == \
               [[x.timestamp() if hasattr(x, "timestamp") else x for x in r] for r in b[k]], k
    _, factory = db()
    with write(factory) as s:             # new rows get fresh ids after a restore (sequences moved on)
        u = ops.create_user(s, "newcomer", "password-n", "annotator", "en")
        p = ops.create_pair(s, u, "en", "q", "a")
    assert u.id == counts["users"] + 1 and p.id == counts["pairs"] + 1
    with pytest.raises(ValueError, match="not empty"):
        transfer.restore(engine, tmp_path / "b.jsonl.gz")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{}\n")
    with pytest.raises(ValueError, match="not an lmlab annotate backup"):
        transfer.restore(engine, broken, force=True)
    src_engine.dispose()


def test_bible_seeds_are_templated_parallel_verses():
    from lmlab.annotate.seeds import bible_comparisons, bible_pairs

    pairs = bible_pairs(["en", "ar", "fr"], 4, seed=3)
    assert pairs == bible_pairs(["en", "ar", "fr"], 4, seed=3) and len(pairs) == 12
    ar = [p for p in pairs if p["language"] == "ar"]
    assert all(any("\u0600" <= ch <= "\u06ff" for ch in p["completion"]) for p in ar)
    assert ar[1]["prompt"].startswith("Translate into Arabic:\n")
    # the same verse in each language: the sources name one verse per index
    verses = [[p["source"].split(":")[2] for p in pairs if p["language"] == x] for x in ("en", "ar", "fr")]
    assert verses[0] == verses[1] == verses[2]
    cmps = bible_comparisons(["en", "ar"], 3)
    assert all(c["a"] != c["b"] for c in cmps) and {c["language"] for c in cmps} == {"en", "ar"}
    with pytest.raises(ValueError, match="language 'xx'"):
        bible_pairs(["xx"], 1)

