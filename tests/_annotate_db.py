"""Database fixtures of the annotation tests: SQLite always, PostgreSQL when one is reachable (LMLAB_TEST_PG_URL,
default postgresql+psycopg://lmlab:lmlab@127.0.0.1:5432/lmlab_test; `.ci/run` starts one). Each PostgreSQL
test gets a schema of its own (search_path), dropped afterwards."""
from __future__ import annotations

import os
import uuid
from urllib.parse import quote

import pytest

PG_URL = os.environ.get("LMLAB_TEST_PG_URL", "postgresql+psycopg://lmlab:lmlab@127.0.0.1:5432/lmlab_test")
_reachable: list = []


def pg_reachable() -> str | None:
    """None when PostgreSQL answers, else why not (one line)."""
    if not _reachable:
        try:
            import psycopg
            from sqlalchemy.engine import make_url

            u = make_url(PG_URL)
            with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                                 dbname=u.database, connect_timeout=2):
                pass
            _reachable.append(None)
        except Exception as e:  # noqa: BLE001 - any failure means: skip with the reason
            _reachable.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return _reachable[0]


class Opened:
    """Opens (engine, sessionmaker) pairs for one URL and disposes them at the end."""

    def __init__(self, url: str, kind: str):
        self.url, self.kind, self.engines = url, kind, []

    def __call__(self, migrate: bool = True):
        from lmlab.annotate.db import open_db

        engine, factory = open_db(self.url, migrate=migrate)
        self.engines.append(engine)
        return engine, factory

    def engine(self):
        from lmlab.annotate.db import make_engine

        e = make_engine(self.url)
        self.engines.append(e)
        return e

    def close(self):
        for e in self.engines:
            e.dispose()


def make_db(kind: str, tmp_path):
    """A context-manager-like generator yielding Opened for a fresh database of `kind`."""
    if kind == "sqlite":
        db = Opened(f"sqlite:///{tmp_path / ('db-' + uuid.uuid4().hex[:8] + '.sqlite')}", "sqlite")
        try:
            yield db
        finally:
            db.close()
        return
    why = pg_reachable()
    if why:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL.split('@')[-1]} ({why}); set LMLAB_TEST_PG_URL to run the "
                    f"annotation data-layer tests on it")
    from sqlalchemy import create_engine, text

    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    db = Opened(f"{PG_URL}{sep}options={quote('-csearch_path=' + schema)}", "postgresql")
    try:
        yield db
    finally:
        db.close()
        with admin.begin() as c:
            c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch):
    """argon2id at its smallest cost: the tests hash dozens of passwords (production keeps argon2-cffi's
    defaults; a hash carries its own parameters, so verification is unchanged)."""
    from argon2 import PasswordHasher

    from lmlab.annotate import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
