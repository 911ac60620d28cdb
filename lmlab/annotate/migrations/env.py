"""Alembic environment of the annotation platform (run through lmlab.annotate.db.upgrade)."""
from alembic import context
from sqlalchemy import create_engine

from lmlab.annotate.db import Base

cfg = context.config
engine = cfg.attributes.get("engine") or create_engine(cfg.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
