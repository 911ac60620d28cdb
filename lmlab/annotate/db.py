"""Database: SQLAlchemy 2 models, the engine (SQLite in WAL mode by default, PostgreSQL through a URL: the same
code), write transactions, and the Alembic upgrade that creates or migrates the schema.

Every row that a person writes carries `client_key`, a random key put into the form when the page is drawn
and unique in its table: a form posted twice (a double click, a retry after a lost response) stores one row.
`Pair.version` is SQLAlchemy's version counter: an UPDATE names the version it read, so two people editing one
pair cannot overwrite each other silently (the second gets StaleDataError, which the app turns into a
conflict page). On SQLite a write transaction starts with BEGIN IMMEDIATE (it takes the write lock first and
waits up to `busy_timeout` for it) so concurrent writers queue instead of failing on a lock upgrade, and
`synchronous=FULL` makes a committed transaction survive the process being killed (and power loss).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import threading
from pathlib import Path

from sqlalchemy import (Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine,
                        event, select)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

ROLES = ("annotator", "reviewer", "admin")
PAIR_STATUSES = ("draft", "seed", "submitted", "approved", "rejected")
REVIEW_STATUSES = ("submitted", "approved", "rejected")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_URL = "sqlite:///annotate.db"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    languages: Mapped[str] = mapped_column(String(255), default="")     # comma-separated language codes
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)

    @property
    def language_list(self) -> list[str]:
        return [x for x in self.languages.split(",") if x]

    def can(self, role: str) -> bool:
        """True when this user's role is `role` or above (annotator < reviewer < admin)."""
        return ROLES.index(self.role) >= ROLES.index(role)


class Invite(Base):
    __tablename__ = "invites"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    languages: Mapped[str] = mapped_column(String(255), default="")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    used_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Pair(Base):
    """A prompt/completion pair. `prompt`/`completion` are its current text (= its latest revision)."""
    __tablename__ = "pairs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    language: Mapped[str] = mapped_column(String(16), index=True)
    kind: Mapped[str] = mapped_column(String(16))                     # original | seed (re-annotation source)
    source: Mapped[str] = mapped_column(String(128), default="")
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    completion: Mapped[str] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    last_editor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    review_comment: Mapped[str] = mapped_column(Text, default="")
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    approved_revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    client_key: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    revisions: Mapped[list["Revision"]] = relationship(back_populates="pair", order_by="Revision.number")
    __mapper_args__ = {"version_id_col": version}


class Revision(Base):
    """One version of a pair's text: number 1 is what was written or imported first, and is never changed."""
    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("pair_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    completion: Mapped[str] = mapped_column(Text)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    pair: Mapped[Pair] = relationship(back_populates="revisions")


class Rating(Base):
    """Feedback: a 1-5 score with a reason, for one revision of a pair."""
    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("pair_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    score: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    client_key: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)


class Comparison(Base):
    """Two completions of one prompt, to be judged pairwise."""
    __tablename__ = "comparisons"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    language: Mapped[str] = mapped_column(String(16), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    completion_a: Mapped[str] = mapped_column(Text)
    completion_b: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)


class Preference(Base):
    """Feedback: which of a comparison's completions is better (a, b or tie), with a reason; reviewed."""
    __tablename__ = "preferences"
    __table_args__ = (UniqueConstraint("comparison_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    choice: Mapped[str] = mapped_column(String(4))
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="submitted", index=True)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    review_comment: Mapped[str] = mapped_column(Text, default="")
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    client_key: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    comparison: Mapped[Comparison] = relationship()
    __mapper_args__ = {"version_id_col": version}


TABLES = [User, Invite, Pair, Revision, Rating, Comparison, Preference]   # in foreign-key order


# ------------------------------------------------------------------------------------------- engine
def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, **kw) -> Engine:
    """An engine for `url`; SQLite gets WAL, synchronous=FULL, foreign keys, a 30 s busy timeout and
    BEGIN IMMEDIATE for write transactions (see `write`)."""
    try:
        u = make_url(url)
    except Exception as e:  # noqa: BLE001 - sqlalchemy's ArgumentError and friends
        raise ValueError(f"database URL {url!r}: {e}") from None
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True, **kw)
    if u.database and u.database != ":memory:":
        parent = Path(u.database).expanduser().resolve().parent
        if not parent.is_dir():
            raise ValueError(f"database URL {url!r}: folder {parent} does not exist")
    engine = create_engine(u, connect_args={"check_same_thread": False, "timeout": 30}, **kw)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None    # SQLAlchemy emits BEGIN itself (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


def sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


_WRITE_LOCKS: dict = {}


@contextlib.contextmanager
def write(factory: sessionmaker):
    """One write transaction: commits when the block ends, rolls back on any exception. On SQLite the write
    transactions of one process also queue on a lock of the process: waiting there blocks until the lock is
    free, while waiting on SQLite's own lock polls with sleeps that grow to 100 ms, so that under load some
    writers waited far longer than others (20 writers for 20 s on the loaded 2-core machine: p99 8.8 s polling,
    2.5 s with the lock; benchmarks/annotate_load.py). Other processes still queue on SQLite's lock."""
    bind = factory.kw.get("bind")
    lock = _WRITE_LOCKS.setdefault(id(bind), threading.Lock()) if bind is not None and bind.dialect.name == "sqlite" \
        else contextlib.nullcontext()
    with lock, factory() as s:
        s.connection(execution_options={"write": True})
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise


@contextlib.contextmanager
def read(factory: sessionmaker):
    with factory() as s:
        yield s


def alembic_config(engine_or_url):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if isinstance(engine_or_url, str):
        cfg.set_main_option("sqlalchemy.url", engine_or_url.replace("%", "%%"))
    else:
        cfg.attributes["engine"] = engine_or_url
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or migrate the schema to `revision` with Alembic (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as c:
        return MigrationContext.configure(c).get_current_revision()


def open_db(url: str, migrate: bool = True):
    """(engine, sessionmaker) for `url`, upgraded to the newest schema when `migrate`."""
    from sqlalchemy.exc import OperationalError

    engine = make_engine(url)
    if migrate:
        try:
            upgrade(engine)
        except OperationalError as e:
            engine.dispose()
            where = url.split("@")[-1]
            raise ValueError(f"database {where}: {str(e.orig).strip().splitlines()[0] if e.orig else e}") from None
    return engine, sessions(engine)


def get_user(s: Session, username: str) -> User | None:
    return s.scalar(select(User).where(User.username == username))
