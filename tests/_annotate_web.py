"""Shared helpers of the annotation web tests: a site with people and seed data, logged-in httpx clients."""
from __future__ import annotations

import re
from types import SimpleNamespace

PASSWORDS = {"root": "root-password", "rita": "rita-password", "amina": "amina-password", "bo": "bo-password",
             "eve": "eve-password"}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def make_site(url: str) -> dict:
    """Admin root, reviewer rita, annotators amina (en, ar) and bo (en, ar), eve (fr); seed pairs and
    comparisons in en and ar. Returns {name: id}."""
    from lmlab.annotate import ops
    from lmlab.annotate.db import open_db, write

    engine, factory = open_db(url)
    ids = {}
    with write(factory) as s:
        for name, role, langs in (("root", "admin", "en,ar"), ("rita", "reviewer", "en,ar"),
                                  ("amina", "annotator", "en,ar"), ("bo", "annotator", "en,ar"),
                                  ("eve", "annotator", "fr")):
            ids[name] = ops.create_user(s, name, PASSWORDS[name], role, langs).id
        for lang, p, c in (("en", "Genesis 1:1", "In the beginning God created the heaven and the earth."),
                           ("ar", "تكوين 1:1", "في البدء خلق الله السموات والارض."),
                           ("en", "Genesis 1:2", "And the earth was without form, and void."),
                           ("ar", "تكوين 1:2", "وكانت الارض خربة وخالية.")):
            ids.setdefault("seeds", []).append(ops.add_seed_pair(s, lang, p, c, "test").id)
        for lang, p, a, b in (("en", "Greet me.", "Hello! How can I help?", "No."),
                              ("ar", "رحب بي.", "أهلا وسهلا! كيف أساعدك؟", "لا.")):
            ids.setdefault("comparisons", []).append(ops.add_comparison(s, lang, p, a, b, "test").id)
    engine.dispose()
    return ids


def login(base: str, name: str, password: str | None = None):
    """An httpx client logged in as `name` and its CSRF token."""
    import httpx

    c = httpx.Client(base_url=base, timeout=30)
    csrf = CSRF.search(c.get("/login").text).group(1)
    r = c.post("/login", data={"csrf": csrf, "username": name, "password": password or PASSWORDS[name], "next": "/"})
    assert r.status_code == 303, (name, r.status_code)
    return SimpleNamespace(c=c, csrf=CSRF.search(c.get("/").text).group(1), name=name)


def key_of(html: str) -> str:
    return re.search(r'name="client_key" value="([^"]+)"', html).group(1)


def version_of(html: str) -> int:
    return int(re.search(r'name="version" value="(\d+)"', html).group(1))
