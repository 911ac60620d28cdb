"""Everything the platform writes, one function per action, each inside the caller's transaction
(`db.write`), plus the queries behind the pages. Rules live here, not in the web layer, so the CLI, the tests
and the pages share them:

- a draft is its author's alone: nobody else reads, edits, rates or reviews it;
- an edit names the version it started from; if the pair changed since, `Conflict` carries the current pair
  (never a silent overwrite); an edit that changes the text adds a revision, revision 1 is never changed;
- a form posted twice stores one row (`client_key`), and an edit re-posted after it was stored is a no-op;
- annotators work in their own languages (admins in any); nobody reviews or rates their own work;
- approved pairs are frozen (what was exported stays what was approved).
"""
from __future__ import annotations

import re
import secrets

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from .db import ROLES, Comparison, Invite, Pair, Preference, Rating, Revision, User, now
from .security import hash_password

MAX_TEXT = 20_000
MAX_REASON = 2_000
USERNAME = re.compile(r"^[A-Za-z0-9_.-]{2,64}$")
LANG = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
RTL = {"ar", "arc", "ckb", "dv", "fa", "he", "ks", "ku", "ps", "sd", "ug", "ur", "yi"}
LANGUAGE_NAMES = {
    "am": "Amharic", "ar": "Arabic", "bn": "Bengali", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "fa": "Persian", "fi": "Finnish", "fr": "French", "ha": "Hausa", "he": "Hebrew",
    "hi": "Hindi", "id": "Indonesian", "ig": "Igbo", "it": "Italian", "ja": "Japanese", "ko": "Korean",
    "ms": "Malay", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "th": "Thai", "tl": "Tagalog", "tr": "Turkish",
    "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese", "yo": "Yoruba", "zh": "Chinese", "zu": "Zulu",
}


class Invalid(ValueError):
    """Bad input (shown to the person as one line)."""


class Denied(Exception):
    """Not allowed, or not there for this user (pages answer 404 for other people's drafts, 403 otherwise)."""

    def __init__(self, msg: str, status: int = 403):
        super().__init__(msg)
        self.status = status


class Conflict(Exception):
    """The pair (or judgement) changed since the form was drawn; `current` is the row as it is now."""

    def __init__(self, current, submitted: dict, session: Session | None = None):
        if session is not None:
            session.expunge(current)      # keeps its loaded values after the transaction rolls back
        super().__init__(f"changed since version {submitted.get('version')}")
        self.current, self.submitted = current, submitted


def direction(lang: str) -> str:
    return "rtl" if lang.split("-")[0] in RTL else "ltr"


def language_name(lang: str) -> str:
    return LANGUAGE_NAMES.get(lang.split("-")[0], lang)


def parse_languages(text: str | list) -> list[str]:
    items = text if isinstance(text, list) else re.split(r"[,\s]+", text or "")
    out = []
    for x in items:
        x = x.strip()
        if not x:
            continue
        if not LANG.match(x):
            raise Invalid(f"language {x!r}: expected a code such as en, ar, pt-BR")
        if x not in out:
            out.append(x)
    return out


def _text(value: str, what: str, limit: int = MAX_TEXT, required: bool = True) -> str:
    value = (value or "").replace("\r\n", "\n")
    if required and not value.strip():
        raise Invalid(f"{what}: empty")
    if len(value) > limit:
        raise Invalid(f"{what}: {len(value)} characters, at most {limit}")
    return value


def _key(client_key: str | None) -> str | None:
    if client_key is None or client_key == "":
        return None
    if not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", client_key):
        raise Invalid("client_key: 8-64 letters, digits, _ or -")
    return client_key


def new_key() -> str:
    return secrets.token_urlsafe(16)


def _check_language(user: User, lang: str) -> None:
    if user.role != "admin" and lang not in user.language_list:
        raise Denied(f"language {lang!r} is not one of yours ({', '.join(user.language_list) or 'none'})")


# ------------------------------------------------------------------------------------------- people
def create_user(s: Session, username: str, password: str, role: str = "annotator", languages="") -> User:
    if not USERNAME.match(username or ""):
        raise Invalid("username: 2-64 letters, digits, '_', '.' or '-'")
    if role not in ROLES:
        raise Invalid(f"role {role!r}: one of {', '.join(ROLES)}")
    if s.scalar(select(User.id).where(func.lower(User.username) == username.lower())) is not None:
        raise Invalid(f"username {username!r} is taken")
    try:
        pw = hash_password(password)
    except ValueError as e:
        raise Invalid(str(e)) from None
    u = User(username=username, password_hash=pw, role=role, languages=",".join(parse_languages(languages)))
    s.add(u)
    s.flush()
    return u


def create_invite(s: Session, admin: User | None, role: str = "annotator", languages="") -> Invite:
    if admin is not None and not admin.can("admin"):
        raise Denied("only admins invite")
    if role not in ROLES:
        raise Invalid(f"role {role!r}: one of {', '.join(ROLES)}")
    inv = Invite(token=secrets.token_urlsafe(24), role=role, languages=",".join(parse_languages(languages)),
                 created_by=admin.id if admin else None)
    s.add(inv)
    s.flush()
    return inv


def redeem_invite(s: Session, token: str, username: str, password: str) -> User:
    inv = s.scalar(select(Invite).where(Invite.token == (token or "")).with_for_update())
    if inv is None or inv.used_by is not None:
        raise Invalid("this invite is not valid (unknown or already used)")
    u = create_user(s, username, password, inv.role, inv.languages)
    inv.used_by, inv.used_at = u.id, now()
    return u


def set_user(s: Session, admin: User, user_id: int, role: str | None = None, languages: str | None = None,
             active: bool | None = None) -> User:
    if not admin.can("admin"):
        raise Denied("admins only")
    u = s.get(User, user_id)
    if u is None:
        raise Denied("no such user", 404)
    if role is not None:
        if role not in ROLES:
            raise Invalid(f"role {role!r}: one of {', '.join(ROLES)}")
        u.role = role
    if languages is not None:
        u.languages = ",".join(parse_languages(languages))
    if active is not None:
        u.active = active
    return u


# -------------------------------------------------------------------------------------------- pairs
def visible_pair(s: Session, user: User, pair_id: int) -> Pair:
    p = s.get(Pair, pair_id)
    if p is None or (p.status == "draft" and p.author_id != user.id):
        raise Denied("no such pair", 404)        # another person's draft does not exist for you
    return p


def create_pair(s: Session, user: User, language: str, prompt: str, completion: str, submit: bool = True,
                client_key: str | None = None) -> Pair:
    """Original annotation: a new pair written by `user` (a draft unless `submit`)."""
    key = _key(client_key)
    if key is not None:
        old = s.scalar(select(Pair).where(Pair.client_key == key))
        if old is not None:
            if old.author_id != user.id:
                raise Invalid("client_key: already used")
            return old                                # the same form posted again
    (language,) = parse_languages([language]) or [None]
    if language is None:
        raise Invalid("language: empty")
    _check_language(user, language)
    prompt, completion = _text(prompt, "prompt"), _text(completion, "completion")
    p = Pair(language=language, kind="original", source="original", author_id=user.id, last_editor_id=user.id,
             status="submitted" if submit else "draft", prompt=prompt, completion=completion, revision=1,
             client_key=key)
    s.add(p)
    s.flush()
    s.add(Revision(pair_id=p.id, number=1, prompt=prompt, completion=completion, author_id=user.id))
    s.flush()
    return p


def add_seed_pair(s: Session, language: str, prompt: str, completion: str, source: str) -> Pair:
    """A pair to be re-annotated (imported or templated)."""
    (language,) = parse_languages([language])
    prompt, completion = _text(prompt, "prompt"), _text(completion, "completion")
    p = Pair(language=language, kind="seed", source=source[:128], status="seed", prompt=prompt,
             completion=completion, revision=1)
    s.add(p)
    s.flush()
    s.add(Revision(pair_id=p.id, number=1, prompt=prompt, completion=completion))
    return p


def edit_pair(s: Session, user: User, pair_id: int, version: int, prompt: str, completion: str,
              submit: bool = True) -> Pair:
    """Edit a pair (the author's draft, or a re-annotation of someone else's pair): a new revision when the
    text changes. `version` is the pair version the form showed; a different current version is a Conflict."""
    p = visible_pair(s, user, pair_id)
    prompt, completion = _text(prompt, "prompt"), _text(completion, "completion")
    if p.version != version:
        if p.last_editor_id == user.id and (p.prompt, p.completion) == (prompt, completion):
            return p                                  # this very edit, posted again after it was stored
        raise Conflict(p, {"version": version, "prompt": prompt, "completion": completion}, s)
    if p.status == "approved":
        raise Denied("this pair is approved and frozen")
    if p.status != "draft":
        _check_language(user, p.language)
    changed = (prompt, completion) != (p.prompt, p.completion)
    if not changed and p.status != "draft":
        raise Invalid("nothing changed: edit the prompt or the completion")
    if changed:
        p.revision += 1
        s.add(Revision(pair_id=p.id, number=p.revision, prompt=prompt, completion=completion, author_id=user.id))
        p.prompt, p.completion, p.last_editor_id = prompt, completion, user.id
    if p.status == "draft":
        p.status = "submitted" if submit else "draft"
    else:
        p.status = "submitted"
    p.updated_at = now()
    p.reviewer_id, p.review_comment, p.reviewed_at = None, "", None
    s.flush()                                          # UPDATE ... WHERE version = read version (StaleDataError)
    return p


def review_pair(s: Session, reviewer: User, pair_id: int, version: int, approve: bool, comment: str = "") -> Pair:
    if not reviewer.can("reviewer"):
        raise Denied("reviewers only")
    p = visible_pair(s, reviewer, pair_id)
    if p.version != version:
        if p.reviewer_id == reviewer.id and p.status == ("approved" if approve else "rejected"):
            return p
        raise Conflict(p, {"version": version, "comment": comment}, s)
    if p.status != "submitted":
        raise Invalid(f"pair {p.id} is {p.status}, not waiting for review")
    if reviewer.id in (p.last_editor_id, p.author_id) and reviewer.role != "admin":
        raise Denied("you cannot review your own work")
    p.status = "approved" if approve else "rejected"
    p.approved_revision = p.revision if approve else None
    p.reviewer_id, p.review_comment, p.reviewed_at = reviewer.id, _text(comment, "comment", MAX_REASON, False), now()
    s.flush()
    return p


# ----------------------------------------------------------------------------------------- feedback
def rate_pair(s: Session, user: User, pair_id: int, score: int, reason: str, client_key: str | None = None) -> Rating:
    key = _key(client_key)
    if key is not None:
        old = s.scalar(select(Rating).where(Rating.client_key == key))
        if old is not None and old.user_id == user.id:
            return old
    p = visible_pair(s, user, pair_id)
    if p.status == "draft":
        raise Invalid("drafts are not rated")
    _check_language(user, p.language)
    if user.id in (p.author_id, p.last_editor_id):
        raise Denied("you cannot rate your own work")
    if not isinstance(score, int) or not 1 <= score <= 5:
        raise Invalid("score: an integer from 1 to 5")
    if s.scalar(select(Rating.id).where(Rating.pair_id == p.id, Rating.user_id == user.id)) is not None:
        raise Invalid("you have already rated this pair")
    r = Rating(pair_id=p.id, revision=p.revision, user_id=user.id, score=score,
               reason=_text(reason, "reason", MAX_REASON), client_key=key)
    s.add(r)
    s.flush()
    return r


def add_comparison(s: Session, language: str, prompt: str, a: str, b: str, source: str) -> Comparison:
    (language,) = parse_languages([language])
    c = Comparison(language=language, prompt=_text(prompt, "prompt"), completion_a=_text(a, "completion_a"),
                   completion_b=_text(b, "completion_b"), source=source[:128])
    s.add(c)
    s.flush()
    return c


def prefer(s: Session, user: User, comparison_id: int, choice: str, reason: str,
           client_key: str | None = None) -> Preference:
    key = _key(client_key)
    if key is not None:
        old = s.scalar(select(Preference).where(Preference.client_key == key))
        if old is not None and old.user_id == user.id:
            return old
    c = s.get(Comparison, comparison_id)
    if c is None:
        raise Denied("no such comparison", 404)
    _check_language(user, c.language)
    if choice not in ("a", "b", "tie"):
        raise Invalid("choice: a, b or tie")
    if s.scalar(select(Preference.id).where(Preference.comparison_id == c.id,
                                            Preference.user_id == user.id)) is not None:
        raise Invalid("you have already judged this comparison")
    pref = Preference(comparison_id=c.id, user_id=user.id, choice=choice, reason=_text(reason, "reason", MAX_REASON),
                      client_key=key)
    s.add(pref)
    s.flush()
    return pref


def review_preference(s: Session, reviewer: User, pref_id: int, version: int, approve: bool,
                      comment: str = "") -> Preference:
    if not reviewer.can("reviewer"):
        raise Denied("reviewers only")
    pref = s.get(Preference, pref_id)
    if pref is None:
        raise Denied("no such judgement", 404)
    if pref.version != version:
        raise Conflict(pref, {"version": version, "comment": comment}, s)
    if pref.status != "submitted":
        raise Invalid(f"judgement {pref.id} is {pref.status}, not waiting for review")
    if pref.user_id == reviewer.id and reviewer.role != "admin":
        raise Denied("you cannot review your own work")
    pref.status = "approved" if approve else "rejected"
    pref.reviewer_id, pref.review_comment, pref.reviewed_at = reviewer.id, _text(comment, "comment", MAX_REASON, False), now()
    s.flush()
    return pref


# ------------------------------------------------------------------------------------------ queries
def _langs(user: User, lang: str | None) -> list[str]:
    if lang:
        return [lang]
    return user.language_list if user.role != "admin" or user.language_list else []


def next_to_reannotate(s: Session, user: User, lang: str | None = None) -> Pair | None:
    q = select(Pair).where(Pair.status == "seed", Pair.revision == 1)
    langs = _langs(user, lang)
    if langs:
        q = q.where(Pair.language.in_(langs))
    return s.scalar(q.order_by(Pair.id).limit(1))


def next_to_rate(s: Session, user: User, lang: str | None = None) -> Pair | None:
    rated = select(Rating.pair_id).where(Rating.user_id == user.id)
    q = select(Pair).where(Pair.status.in_(("seed", "submitted", "approved")), Pair.id.not_in(rated),
                           or_(Pair.author_id.is_(None), Pair.author_id != user.id),
                           or_(Pair.last_editor_id.is_(None), Pair.last_editor_id != user.id))
    langs = _langs(user, lang)
    if langs:
        q = q.where(Pair.language.in_(langs))
    # least-rated first, so that feedback spreads over the data
    n = select(func.count(Rating.id)).where(Rating.pair_id == Pair.id).scalar_subquery()
    return s.scalar(q.order_by(n, Pair.id).limit(1))


def next_comparison(s: Session, user: User, lang: str | None = None) -> Comparison | None:
    done = select(Preference.comparison_id).where(Preference.user_id == user.id)
    q = select(Comparison).where(Comparison.id.not_in(done))
    langs = _langs(user, lang)
    if langs:
        q = q.where(Comparison.language.in_(langs))
    return s.scalar(q.order_by(Comparison.id).limit(1))


def review_queue(s: Session, reviewer: User, lang: str | None = None, limit: int = 50):
    pq = select(Pair).where(Pair.status == "submitted")
    fq = select(Preference).join(Comparison).where(Preference.status == "submitted")
    langs = _langs(reviewer, lang)
    if langs:
        pq, fq = pq.where(Pair.language.in_(langs)), fq.where(Comparison.language.in_(langs))
    return (list(s.scalars(pq.order_by(Pair.updated_at, Pair.id).limit(limit))),
            list(s.scalars(fq.order_by(Preference.created_at, Preference.id).limit(limit))))


def search_pairs(s: Session, user: User, language: str = "", status: str = "", annotator: str = "", q: str = "",
                 page: int = 1, per_page: int = 50) -> tuple[list[Pair], int]:
    stmt = select(Pair).where(or_(Pair.status != "draft", Pair.author_id == user.id))
    if language:
        stmt = stmt.where(Pair.language == language)
    if status:
        stmt = stmt.where(Pair.status == status)
    if annotator:
        uid = s.scalar(select(User.id).where(User.username == annotator))
        stmt = stmt.where(or_(Pair.author_id == uid, Pair.last_editor_id == uid))
    if q:
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(or_(Pair.prompt.ilike(like, escape="\\"), Pair.completion.ilike(like, escape="\\")))
    total = s.scalar(select(func.count()).select_from(stmt.subquery()))
    rows = list(s.scalars(stmt.order_by(Pair.id.desc()).offset((max(page, 1) - 1) * per_page).limit(per_page)))
    return rows, total


def progress(s: Session) -> list[dict]:
    """Per language: pairs by status (drafts excluded), re-annotated seeds, ratings and judgements."""
    out: dict[str, dict] = {}
    for lang, status, n in s.execute(select(Pair.language, Pair.status, func.count()).group_by(Pair.language,
                                                                                                 Pair.status)):
        if status != "draft":
            out.setdefault(lang, {})[status] = n
    for lang, n in s.execute(select(Pair.language, func.count()).where(Pair.kind == "seed", Pair.revision > 1)
                             .group_by(Pair.language)):
        out.setdefault(lang, {})["reannotated"] = n
    for lang, n in s.execute(select(Pair.language, func.count(Rating.id)).join(Rating, Rating.pair_id == Pair.id)
                             .group_by(Pair.language)):
        out.setdefault(lang, {})["ratings"] = n
    for lang, n in s.execute(select(Comparison.language, func.count(Preference.id))
                             .join(Preference, Preference.comparison_id == Comparison.id).group_by(Comparison.language)):
        out.setdefault(lang, {})["judgements"] = n
    rows = []
    for lang in sorted(out):
        d = out[lang]
        total = sum(d.get(k, 0) for k in ("seed", "submitted", "approved", "rejected"))
        rows.append({"language": lang, "name": language_name(lang), "total": total,
                     **{k: d.get(k, 0) for k in ("seed", "submitted", "approved", "rejected", "reannotated",
                                                 "ratings", "judgements")},
                     "approved_share": d.get("approved", 0) / total if total else 0.0})
    return rows


def leaderboard(s: Session, limit: int = 50) -> list[dict]:
    """Contributions per person: original pairs submitted, re-annotation revisions, ratings, judgements and
    how many of their pairs were approved; points = originals + edits + (ratings + judgements) / 2."""
    rows: dict[int, dict] = {}

    def add(stmt, key):
        for uid, n in s.execute(stmt):
            if uid is not None:
                rows.setdefault(uid, {})[key] = n

    add(select(Pair.author_id, func.count()).where(Pair.kind == "original", Pair.status != "draft")
        .group_by(Pair.author_id), "originals")
    add(select(Revision.author_id, func.count()).where(Revision.number > 1).group_by(Revision.author_id), "edits")
    add(select(Rating.user_id, func.count()).group_by(Rating.user_id), "ratings")
    add(select(Preference.user_id, func.count()).group_by(Preference.user_id), "judgements")
    add(select(Pair.last_editor_id, func.count()).where(Pair.status == "approved").group_by(Pair.last_editor_id),
        "approved")
    names = dict(s.execute(select(User.id, User.username).where(User.id.in_(list(rows)))).all()) if rows else {}
    out = []
    for uid, d in rows.items():
        d = {k: d.get(k, 0) for k in ("originals", "edits", "ratings", "judgements", "approved")}
        d["points"] = d["originals"] + d["edits"] + (d["ratings"] + d["judgements"]) / 2
        out.append({"username": names.get(uid, "?"), **d})
    out.sort(key=lambda r: (-r["points"], r["username"]))
    return out[:limit]
