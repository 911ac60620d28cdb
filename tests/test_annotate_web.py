"""`lmlab annotate` over HTTP: the three activities, review, the conflict page, one row per double post, the
exports read as they are by an actual `lmlab align sft|dpo|rm` run, kill -9 of the server during a burst of
writes, and a short version of the 20-annotator load test (benchmarks/annotate_load.py runs it for 60 s)."""
from __future__ import annotations

import importlib.util
import io
import json
import re
import threading
import zipfile
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from lmlab.annotate.app import create_app
from lmlab.annotate.db import Comparison, Pair, Preference, Rating, Revision, User, read

from _annotate_db import fast_argon2  # noqa: F401 - autouse fixture
from _annotate_web import key_of, login, make_site, version_of
from _helpers import serving

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("annotate_load", ROOT / "benchmarks" / "annotate_load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def site(tmp_path):
    url = f"sqlite:///{tmp_path / 'site.db'}"
    ids = make_site(url)
    app = create_app(url, secret="test-secret-0123456789")
    with serving(app) as base:
        yield base[: -len("/v1")], app.state.factory, ids
    app.state.engine.dispose()


def _count(factory, model, *where):
    with read(factory) as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_activities_review_export_and_align_round_trip(site, tmp_path):
    from lmlab.cli import main

    base, factory, ids = site
    amina, bo, rita = login(base, "amina"), login(base, "bo"), login(base, "rita")
    # (a) original annotation in English and Arabic; a draft first, then submitted
    for lang, p, c in (("en", "Name three primary colours.", "Red, yellow and blue."),
                       ("ar", "ما هي عاصمة المغرب؟", "عاصمة المغرب هي الرباط.")):
        html = amina.c.get(f"/annotate/new?lang={lang}").text
        r = amina.c.post("/annotate/new", data={"csrf": amina.csrf, "client_key": key_of(html), "language": lang,
                                                "prompt": p, "completion": c, "action": "submit"})
        assert r.status_code == 303 and r.headers["location"].startswith("/pairs/")
        page = amina.c.get(r.headers["location"]).text
        assert c in page and ('lang="ar" dir="rtl"' in page) == (lang == "ar")
    # (b) re-annotation of a seed pair in each language: the original stays, the diff shows
    for lang in ("en", "ar"):
        r = bo.c.get(f"/reannotate?lang={lang}")
        assert r.status_code == 303 and r.headers["location"].endswith("/edit")
        edit = r.headers["location"]
        html = bo.c.get(edit).text
        pid = int(edit.split("/")[2])
        with read(factory) as s:
            old = s.get(Pair, pid)
        new = old.completion + (" (KJV)" if lang == "en" else " (ترجمة فان دايك)")
        r = bo.c.post(edit, data={"csrf": bo.csrf, "version": version_of(html), "prompt": old.prompt,
                                  "completion": new, "action": "submit"})
        assert r.status_code == 303
        page = bo.c.get(f"/pairs/{pid}").text
        assert "<ins>" in page and "Changes: revision 1 → 2" in page
    # (c) feedback: a 1-5 rating with a reason, and pairwise preference, in both languages
    for lang in ("en", "ar"):
        html = rita.c.get(f"/feedback/rate?lang={lang}").text
        pid = int(html.split('action="/pairs/')[1].split("/")[0])
        r = rita.c.post(f"/pairs/{pid}/rate", data={"csrf": rita.csrf, "client_key": key_of(html), "score": "4",
                                                    "reason": "clear" if lang == "en" else "واضح"})
        assert r.status_code == 303
        html = amina.c.get(f"/feedback/compare?lang={lang}").text
        cid = int(html.split('action="/comparisons/')[1].split("/")[0])
        with read(factory) as s:
            c = s.get(Comparison, cid)
        good = "a" if c.completion_a.startswith(("Hello", "أهلا")) else "b"
        r = amina.c.post(f"/comparisons/{cid}/judge", data={"csrf": amina.csrf, "client_key": key_of(html),
                                                            "choice": good, "reason": "polite", "lang": lang})
        assert r.status_code == 303
    assert _count(factory, Rating) == 2 and _count(factory, Preference) == 2
    # review: rita approves everything in her queue
    q = rita.c.get("/review").text
    for kind, iid, ver in re.findall(r'action="/review/(pairs|preferences)/(\d+)" class="review">\s*'
                                     r'<input type="hidden" name="csrf" value="[^"]+"><input type="hidden" '
                                     r'name="version" value="(\d+)"', q):
        r = rita.c.post(f"/review/{kind}/{iid}", data={"csrf": rita.csrf, "version": ver, "decision": "approve",
                                                       "comment": "ok"})
        assert r.status_code == 303, (kind, iid)
    assert _count(factory, Pair, Pair.status == "approved") == 4
    assert _count(factory, Preference, Preference.status == "approved") == 2
    # export through the web, and train on it as it is
    sft = rita.c.get("/export/sft.jsonl")
    prefs = rita.c.get("/export/preferences.jsonl")
    assert sft.status_code == prefs.status_code == 200
    (tmp_path / "sft.jsonl").write_bytes(sft.content)
    (tmp_path / "prefs.jsonl").write_bytes(prefs.content)
    assert len(sft.text.splitlines()) == 4 and len(prefs.text.splitlines()) == 2
    model = "model: {vocab_size: 258, d_model: 32, n_layer: 1, n_head: 2, max_seq_len: 128}\n"
    runs = {}
    for stage, data, section in (("sft", "sft.jsonl", "sft: {steps: 2, batch_size: 2, grad_accum: 1, seq_len: 32}"),
                                 ("dpo", "prefs.jsonl", "dpo: {epochs: 1, batch_size: 2}"),
                                 ("rm", "prefs.jsonl", "rm: {epochs: 1, batch_size: 2}")):
        cfg = tmp_path / f"{stage}.yaml"
        init = f"init_from: {runs['sft']}\n" if stage == "dpo" else ""
        cfg.write_text(f"name: {stage}\nout_dir: {tmp_path / stage}\n{init}{model}data: {{path: {tmp_path / data}}}\n"
                       f"{section}\n")
        with pytest.raises(SystemExit) as e:
            main(["align", stage, "--config", str(cfg)])
        assert e.value.code == 0, stage
        runs[stage] = tmp_path / stage
    summ = {k: json.loads((v / "summary.json").read_text()) for k, v in runs.items()}
    assert summ["sft"]["examples"] == 4 and summ["dpo"]["pairs"] == 2 and summ["rm"]["pairs"] == 2
    # the datasets folder comes zipped, with its card
    z = rita.c.get("/export/dataset.zip?license=cc-by-4.0")
    names = zipfile.ZipFile(io.BytesIO(z.content)).namelist()
    assert "dataset/README.md" in names and "dataset/data/sft.parquet" in names
    card = zipfile.ZipFile(io.BytesIO(z.content)).read("dataset/README.md").decode()
    assert "license: cc-by-4.0" in card and "- ar" in card
    # progress and leaderboard show the work
    prog = rita.c.get("/progress").text
    assert "Arabic (ar)" in prog and "amina" in prog and "bo" in prog
    # search and filter: language, status, annotator, text
    def ids_of(query):
        return sorted(int(x) for x in re.findall(r'<td><a href="/pairs/(\d+)">', rita.c.get("/browse?" + query).text))
    with read(factory) as s:
        ar_approved = sorted(s.scalars(select(Pair.id).where(Pair.language == "ar", Pair.status == "approved")))
        by_bo = sorted(s.scalars(select(Pair.id).where(Pair.last_editor_id == ids["bo"])))
    assert len(ar_approved) == 2 and ids_of("language=ar&status=approved") == ar_approved
    assert len(by_bo) == 2 and ids_of("annotator=bo") == by_bo
    assert len(ids_of("q=" + "الرباط")) == 1 and ids_of("status=seed&language=en") == [ids["seeds"][2]]


def test_concurrent_edit_gets_the_conflict_page_and_nothing_is_overwritten(site):
    base, factory, ids = site
    amina, bo = login(base, "amina"), login(base, "bo")
    pid = ids["seeds"][1]                                   # Arabic
    ha, hb = amina.c.get(f"/pairs/{pid}/edit").text, bo.c.get(f"/pairs/{pid}/edit").text
    with read(factory) as s:
        p = s.get(Pair, pid)
    ra = amina.c.post(f"/pairs/{pid}/edit", data={"csrf": amina.csrf, "version": version_of(ha), "prompt": p.prompt,
                                                  "completion": "نص أمينة", "action": "submit"})
    rb = bo.c.post(f"/pairs/{pid}/edit", data={"csrf": bo.csrf, "version": version_of(hb), "prompt": p.prompt,
                                               "completion": "نص بو", "action": "submit"})
    assert ra.status_code == 303 and rb.status_code == 409
    assert "Someone changed this pair" in rb.text and "نص أمينة" in rb.text and "نص بو" in rb.text
    with read(factory) as s:
        assert s.get(Pair, pid).completion == "نص أمينة"
        assert [r.completion for r in s.scalars(select(Revision).where(Revision.pair_id == pid)
                                                .order_by(Revision.number))] == [p.completion, "نص أمينة"]
    # from the conflict page bo submits on top of amina's version: revision 3
    r = bo.c.post(f"/pairs/{pid}/edit", data={"csrf": bo.csrf, "version": version_of(rb.text), "prompt": p.prompt,
                                              "completion": "نص بو", "action": "submit"})
    assert r.status_code == 303
    with read(factory) as s:
        assert s.get(Pair, pid).revision == 3


def test_people_set_languages_and_admins_set_roles(site):
    base, factory, ids = site
    eve, root = login(base, "eve"), login(base, "root")
    assert eve.c.get("/annotate/new?lang=ar").status_code == 200        # the page draws; the write is refused
    html = eve.c.get("/annotate/new?lang=fr").text
    r = eve.c.post("/annotate/new", data={"csrf": eve.csrf, "client_key": key_of(html), "language": "ar",
                                          "prompt": "سؤال", "completion": "جواب", "action": "submit"})
    assert r.status_code == 403 and "not one of yours" in r.text
    assert eve.c.post("/account", data={"csrf": eve.csrf, "languages": "fr, ar"}).status_code == 200
    r = eve.c.post("/annotate/new", data={"csrf": eve.csrf, "client_key": key_of(html), "language": "ar",
                                          "prompt": "سؤال", "completion": "جواب", "action": "submit"})
    assert r.status_code == 303
    assert eve.c.post("/account", data={"csrf": eve.csrf, "languages": "français"}).status_code == 400
    r = root.c.post(f"/admin/users/{ids['eve']}", data={"csrf": root.csrf, "role": "reviewer", "languages": "fr",
                                                        "active": "1"})
    assert r.status_code == 303
    with read(factory) as s:
        u = s.get(User, ids["eve"])
        assert (u.role, u.languages) == ("reviewer", "fr")
    assert eve.c.get("/review").status_code == 200                       # the new role applies at once
    root.c.post(f"/admin/users/{ids['eve']}", data={"csrf": root.csrf, "active": "0"})
    assert eve.c.get("/").status_code == 303                             # a deactivated account is logged out


def test_a_form_posted_twice_stores_one_pair(site):
    base, factory, ids = site
    amina = login(base, "amina")
    html = amina.c.get("/annotate/new?lang=en").text
    form = {"csrf": amina.csrf, "client_key": key_of(html), "language": "en", "prompt": "Say hi.", "completion": "Hi!",
            "action": "submit"}
    locs = {amina.c.post("/annotate/new", data=form).headers["location"] for _ in range(3)}
    assert len(locs) == 1 and _count(factory, Pair, Pair.prompt == "Say hi.") == 1


def test_kill_9_during_a_burst_of_writes_loses_no_committed_annotation(tmp_path):
    bench = _bench()
    url = f"sqlite:///{tmp_path / 'k.db'}"
    names = bench.make_users(url, 6)
    proc, base = bench.start_server(url)
    clock, stop = bench.Clock(len(names), 30.0), threading.Event()
    ts = [bench.Annotator(base, n, bench.LANGS[i % 4], clock, retry_every=0, stop=stop) for i, n in enumerate(names)]
    for t in ts:
        t.start()
    clock.start()
    t0 = time.time()
    while sum(len(t.acked) for t in ts) < 20 and time.time() - t0 < 25:
        time.sleep(0.05)
    bench.stop_server(proc, kill=True)                     # SIGKILL while requests are in flight
    stop.set()
    for t in ts:
        t.join(30)
    acked = sum(len(t.acked) for t in ts)
    assert acked >= 10, "too few writes before the kill to test anything"
    res = bench.check(url, ts)
    assert res["lost"] == 0 and res["duplicated"] == 0 and res["unexpected"] == 0, res
    assert res["integrity"] == "ok" and res["pairs_without_revision"] == 0, res
    assert res["rows"] >= acked                            # a write may commit just before its answer is lost
    # the server starts again on the same file and takes writes
    proc, base = bench.start_server(url)
    try:
        c, csrf = bench.login(base, names[0])
        r = c.post("/annotate/new", data={"csrf": csrf, "client_key": "after-restart-0", "language": "en",
                                          "prompt": "after", "completion": "restart", "action": "submit"})
        assert r.status_code == 303
    finally:
        bench.stop_server(proc)
    e = create_engine(url)
    with e.connect() as con:
        assert con.execute(text("SELECT count(*) FROM pairs")).scalar() == res["rows"] + 1
    e.dispose()


def test_short_load_20_annotators_lose_and_duplicate_nothing(tmp_path):
    res = _bench().run(tmp_path / "load.db", users=20, seconds=3.0, retry_every=3)
    assert res["errors"] == 0, res["first_errors"]
    assert res["acked_writes"] >= 10 and res["lost"] == 0 and res["duplicated"] == 0 and res["unexpected"] == 0, res
    assert res["retry_mismatch"] == 0 and res["integrity"] == "ok" and res["pairs_without_revision"] == 0, res
    assert res["latency_ms"]["p99"] > 0


def test_the_same_app_on_postgresql(tmp_path):
    """The web app on PostgreSQL (skipped when none is reachable): write, concurrent edit -> conflict, export."""
    from _annotate_db import make_db

    gen = make_db("postgresql", tmp_path)
    db = next(gen)
    try:
        ids = make_site(db.url)
        app = create_app(db.url, secret="test-secret-0123456789")
        db.engines.append(app.state.engine)
        with serving(app) as base:
            base = base[: -len("/v1")]
            amina, bo, rita = login(base, "amina"), login(base, "bo"), login(base, "rita")
            html = amina.c.get("/annotate/new?lang=ar").text
            form = {"csrf": amina.csrf, "client_key": key_of(html), "language": "ar", "prompt": "ما لون السماء؟",
                    "completion": "زرقاء.", "action": "submit"}
            locs = {amina.c.post("/annotate/new", data=form).headers["location"] for _ in range(2)}
            assert len(locs) == 1
            pid = ids["seeds"][0]
            ha, hb = amina.c.get(f"/pairs/{pid}/edit").text, bo.c.get(f"/pairs/{pid}/edit").text
            ra = amina.c.post(f"/pairs/{pid}/edit", data={"csrf": amina.csrf, "version": version_of(ha),
                                                          "prompt": "Genesis 1:1", "completion": "A", "action": "submit"})
            rb = bo.c.post(f"/pairs/{pid}/edit", data={"csrf": bo.csrf, "version": version_of(hb),
                                                       "prompt": "Genesis 1:1", "completion": "B", "action": "submit"})
            assert (ra.status_code, rb.status_code) == (303, 409)
            q = rita.c.get("/review").text
            for iid, ver in re.findall(r'action="/review/pairs/(\d+)" class="review">\s*<input type="hidden" '
                                       r'name="csrf" value="[^"]+"><input type="hidden" name="version" value="(\d+)"', q):
                assert rita.c.post(f"/review/pairs/{iid}", data={"csrf": rita.csrf, "version": ver,
                                                                 "decision": "approve"}).status_code == 303
            rows = [json.loads(x) for x in rita.c.get("/export/sft.jsonl").text.splitlines()]
            assert sorted(r["messages"][1]["content"] for r in rows) == ["A", "زرقاء."]
    finally:
        next(gen, None)
