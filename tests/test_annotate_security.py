"""Security of `lmlab annotate serve`: CSRF on every form, other people's drafts, admin pages, escaping, body
limits (413), the login rate limit, tampered cookies, open redirects, one-time invites."""
from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import func, select

from lmlab.annotate.app import create_app
from lmlab.annotate.db import Invite, Pair, Preference, Rating, Revision, User, read

from _annotate_db import fast_argon2  # noqa: F401 - autouse fixture
from _annotate_web import CSRF, key_of, login, make_site, version_of
from _helpers import serving

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def site(tmp_path):
    url = f"sqlite:///{tmp_path / 'site.db'}"
    ids = make_site(url)
    app = create_app(url, secret="test-secret-0123456789", max_body=64 * 1024, max_upload=256 * 1024,
                     login_limit=(3, 60.0))
    with serving(app) as base:
        yield base[: -len("/v1")], app, ids
    app.state.engine.dispose()


def _snapshot(app):
    with read(app.state.factory) as s:
        return [s.scalar(select(func.count()).select_from(m)) for m in (User, Invite, Pair, Revision, Rating,
                                                                         Preference)] + \
               [tuple(s.execute(select(User.role, User.languages).order_by(User.id)).all())]


def test_every_post_route_refuses_a_missing_or_wrong_csrf_token(site):
    base, app, ids = site
    root = login(base, "root")
    posts = sorted({r.path for r in app.fastapi.routes if "POST" in getattr(r, "methods", set())})
    assert len(posts) >= 14, posts
    before = _snapshot(app)
    form = {"language": "en", "prompt": "p", "completion": "c", "version": "1", "score": "3", "reason": "r",
            "choice": "a", "decision": "approve", "role": "admin", "languages": "en", "username": "root",
            "password": "root-password", "token": "x", "n": "1"}
    for path in posts:
        url = re.sub(r"\{[^}]+\}", "1", path)
        for extra in ({}, {"csrf": "forged-token"}):
            r = root.c.post(url, data={**form, **extra})
            assert r.status_code == 403 and "CSRF" in r.text, (url, extra, r.status_code)
    # a token from another session does not work either
    other = login(base, "amina")
    r = root.c.post("/admin/invites", data={"csrf": other.csrf, "role": "admin"})
    assert r.status_code == 403
    assert _snapshot(app) == before
    # and the same form with the session's token goes through
    assert root.c.post("/admin/invites", data={"csrf": root.csrf, "role": "annotator"}).status_code == 303


def test_another_users_draft_is_neither_readable_nor_writable(site):
    base, app, ids = site
    amina, bo = login(base, "amina"), login(base, "bo")
    html = amina.c.get("/annotate/new?lang=en").text
    r = amina.c.post("/annotate/new", data={"csrf": amina.csrf, "client_key": key_of(html), "language": "en",
                                            "prompt": "secret draft prompt", "completion": "secret draft answer",
                                            "action": "draft"})
    pid = int(r.headers["location"].split("/")[2].split("?")[0])
    assert "secret draft answer" in amina.c.get(f"/pairs/{pid}").text
    before = _snapshot(app)
    for url in (f"/pairs/{pid}", f"/pairs/{pid}/edit", "/browse?q=secret", "/feedback/rate?lang=en"):
        r = bo.c.get(url)
        assert "secret draft" not in r.text, url
    assert bo.c.get(f"/pairs/{pid}").status_code == 404
    for url, data in ((f"/pairs/{pid}/edit", {"version": "1", "prompt": "x", "completion": "hijacked"}),
                      (f"/pairs/{pid}/rate", {"score": "1", "reason": "r", "client_key": "bo-rates-draft"})):
        r = bo.c.post(url, data={"csrf": bo.csrf, **data})
        assert r.status_code == 404, url
    # reviewers and admins do not see it either: a draft is its author's alone
    assert login(base, "root").c.get(f"/pairs/{pid}").status_code == 404
    assert _snapshot(app) == before
    with read(app.state.factory) as s:
        assert s.get(Pair, pid).completion == "secret draft answer"


def test_admin_and_reviewer_pages_are_refused_to_annotators(site):
    base, app, ids = site
    amina = login(base, "amina")
    before = _snapshot(app)
    for url in ("/admin", "/review", "/export/sft.jsonl", "/export/preferences.jsonl", "/export/dataset.zip"):
        assert amina.c.get(url).status_code == 403, url
    for url, data in (("/admin/invites", {"role": "admin"}), (f"/admin/users/{ids['amina']}", {"role": "admin"}),
                      ("/admin/seed-bible", {"languages": "en", "n": "1"}),
                      (f"/review/pairs/{ids['seeds'][0]}", {"version": "1", "decision": "approve"})):
        assert amina.c.post(url, data={"csrf": amina.csrf, **data}).status_code == 403, url
    r = amina.c.post("/admin/import", files={"file": ("x.jsonl", b'{"prompt":"p","completion":"c"}\n')},
                     data={"csrf": amina.csrf, "language": "en"})
    assert r.status_code == 403
    assert _snapshot(app) == before
    anon = httpx.Client(base_url=base)
    r = anon.get("/admin")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_html_and_script_in_annotations_are_escaped(site):
    base, app, ids = site
    amina, rita = login(base, "amina"), login(base, "rita")
    html = amina.c.get("/annotate/new?lang=ar").text
    r = amina.c.post("/annotate/new", data={"csrf": amina.csrf, "client_key": key_of(html), "language": "ar",
                                            "prompt": XSS, "completion": "جواب " + XSS, "action": "submit"})
    pid = int(r.headers["location"].split("/")[2].split("?")[0])
    edit = amina.c.get(f"/pairs/{pid}/edit").text
    amina.c.post(f"/pairs/{pid}/edit", data={"csrf": amina.csrf, "version": version_of(edit), "prompt": XSS,
                                             "completion": XSS + " <b>bold</b>", "action": "submit"})
    for client, url in ((amina, f"/pairs/{pid}"), (rita, "/review"), (rita, "/browse"), (amina, f"/pairs/{pid}/edit")):
        page = client.c.get(url).text
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>bold" not in page, url
        assert "&lt;script&gt;alert(" in page, url
    r = amina.c.get(f"/pairs/{pid}")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"


def test_oversized_bodies_get_413(site):
    base, app, ids = site
    amina = login(base, "amina")
    before = _snapshot(app)
    big = "x" * (70 * 1024)
    html = amina.c.get("/annotate/new?lang=en").text
    r = amina.c.post("/annotate/new", data={"csrf": amina.csrf, "client_key": key_of(html), "language": "en",
                                            "prompt": "p", "completion": big})
    assert r.status_code == 413

    def chunks():                      # no Content-Length: counted while it streams
        yield f"csrf={amina.csrf}&language=en&prompt=p&completion=".encode()
        for _ in range(40):
            yield b"y" * 4096

    r = amina.c.post("/annotate/new", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    root = login(base, "root")
    r = root.c.post("/admin/import", files={"file": ("x.jsonl", b"{}" * (200 * 1024))}, data={"csrf": root.csrf})
    assert r.status_code == 413
    assert _snapshot(app) == before
    # under the limits the same forms work
    ok = root.c.post("/admin/import", files={"file": ("x.jsonl", b'{"prompt": "p", "completion": "c"}\n' * 100)},
                     data={"csrf": root.csrf, "language": "en"})
    assert ok.status_code == 303 and "imported+100+pairs" in ok.headers["location"]


def test_login_rate_limit_and_sessions(site):
    base, app, ids = site
    c = httpx.Client(base_url=base)
    csrf = CSRF.search(c.get("/login").text).group(1)
    for _ in range(3):
        r = c.post("/login", data={"csrf": csrf, "username": "bo", "password": "wrong-password"})
        assert r.status_code == 401
    r = c.post("/login", data={"csrf": csrf, "username": "bo", "password": "bo-password"})
    assert r.status_code == 429 and "Too many failed logins" in r.text
    login(base, "amina")                  # others are not locked out
    # a tampered cookie is no session; an open redirect is refused
    amina = login(base, "amina")
    cookie = amina.c.cookies.get("lmlab_session")
    forged = httpx.Client(base_url=base, cookies={"lmlab_session": cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")})
    assert forged.get("/").status_code == 303
    c2 = httpx.Client(base_url=base)
    csrf2 = CSRF.search(c2.get("/login").text).group(1)
    r = c2.post("/login", data={"csrf": csrf2, "username": "eve", "password": "eve-password", "next": "//evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_invites_work_once(site):
    base, app, ids = site
    root = login(base, "root")
    r = root.c.post("/admin/invites", data={"csrf": root.csrf, "role": "reviewer", "languages": "ar, he"})
    token = r.headers["location"].split("invite=")[1]
    for name, want in (("newbie", 303), ("second", 404)):
        c = httpx.Client(base_url=base)
        page = c.get(f"/signup?token={token}")
        if want == 404:
            assert page.status_code == 404
            r = c.post("/signup", data={"csrf": CSRF.search(c.get("/login").text).group(1), "token": token,
                                        "username": name, "password": "long-password", "password2": "long-password"})
            assert r.status_code == 400 and "not valid" in r.text
            continue
        r = c.post("/signup", data={"csrf": CSRF.search(page.text).group(1), "token": token, "username": name,
                                    "password": "long-password", "password2": "long-password"})
        assert r.status_code == want
    with read(app.state.factory) as s:
        u = s.scalar(select(User).where(User.username == "newbie"))
        assert (u.role, u.languages) == ("reviewer", "ar,he") and s.scalar(select(func.count(User.id))) == 6
