"""The web application: FastAPI routes that draw Jinja2 pages (autoescaped) and call `ops` inside one write
transaction per POST.

Request pipeline: `Guard` (pure ASGI) answers 413 to a body over the limit (by Content-Length, or counted
while it streams) and adds security headers (a CSP without inline script, no framing); the session middleware
reads the signed cookie or starts an anonymous session; the app-wide `csrf_guard` dependency parses the form of
every unsafe request and refuses it (403) unless it carries the session's CSRF token. Pages read through
`db.read`, writes go through `transact` (retried once on a lost race: a duplicate client_key or a stale
version, which the second try reports properly as the stored row or a Conflict).
"""
from __future__ import annotations

import difflib
import io
import os
import re
import secrets
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from . import ops, transfer
from .db import PAIR_STATUSES, ROLES, Comparison, Invite, Pair, Rating, Revision, User, open_db, read, write
from .security import RateLimiter, Sessions, csrf_ok, verify_password

HERE = Path(__file__).resolve().parent
SAFE = {"GET", "HEAD", "OPTIONS"}


class TooLarge(Exception):
    pass


class Guard:
    """413 for bodies over `limit` bytes (`big_limit` under the paths in `big_paths`), and security headers."""

    HEADERS = [(b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                             b"script-src 'self'; frame-ancestors 'none'; form-action 'self'"),
               (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"referrer-policy", b"same-origin")]

    def __init__(self, app, limit: int, big_limit: int, big_paths=("/admin/import",)):
        self.app, self.limit, self.big_limit, self.big_paths = app, limit, big_limit, tuple(big_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.big_limit if scope["path"].startswith(self.big_paths) else self.limit
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        state = {"started": False, "over": False}

        async def send_wrapped(msg):
            if state["over"]:       # the body went over the limit: whatever the app answers, the answer is 413
                if not state["started"]:
                    await reject()
                return
            if msg["type"] == "http.response.start":
                state["started"] = True
                msg["headers"] = list(msg.get("headers", [])) + self.HEADERS
            await send(msg)

        async def reject():
            state["started"] = True
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")] + self.HEADERS})
            await send({"type": "http.response.body", "body": f"request body over {limit} bytes\n".encode()})

        if declared > limit:
            return await reject()
        seen = 0

        async def receive_counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    state["over"] = True
                    raise TooLarge()
            return msg

        try:
            await self.app(scope, receive_counted, send_wrapped)
        except Exception as e:  # noqa: BLE001 - TooLarge may come wrapped in an ExceptionGroup by a task group
            if not (state["over"] or _contains(e, TooLarge)):
                raise
            if not state["started"]:
                await reject()


def _contains(e: BaseException, kind) -> bool:
    return isinstance(e, kind) or any(_contains(x, kind) for x in getattr(e, "exceptions", ()))


class Redirect(Exception):
    def __init__(self, url: str):
        self.url = url


class Problem(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """[(op, text)] with op in {'=', '-', '+'}: a word-level diff (spaces kept) from a to b."""
    ta, tb = re.findall(r"\s+|[^\s]+", a), re.findall(r"\s+|[^\s]+", b)
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append(("=", "".join(ta[i1:i2])))
        else:
            if i2 > i1:
                out.append(("-", "".join(ta[i1:i2])))
            if j2 > j1:
                out.append(("+", "".join(tb[j1:j2])))
    return out


def create_app(db_url: str, secret: str | None = None, max_body: int = 256 * 1024, max_upload: int = 16 << 20,
               login_limit: tuple[int, float] = (5, 300.0), secure_cookies: bool = False, migrate: bool = True):
    """The ASGI app for the database at `db_url` (created/migrated with Alembic when `migrate`). `secret`
    signs the session cookies (default: $LMLAB_ANNOTATE_SECRET, else random per process, which logs everyone
    out on restart)."""
    engine, factory = open_db(db_url, migrate=migrate)
    secret = secret or os.environ.get("LMLAB_ANNOTATE_SECRET") or secrets.token_urlsafe(32)
    sess = Sessions(secret)
    limiter = RateLimiter(*login_limit)
    ip_limiter = RateLimiter(login_limit[0] * 4, login_limit[1])
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(direction=ops.direction, language_name=ops.language_name, roles=ROLES,
                                 statuses=PAIR_STATUSES, word_diff=word_diff)

    async def csrf_guard(request: Request):
        if request.method in SAFE:
            return
        ctype = request.headers.get("content-type", "")
        form = await request.form(max_files=1, max_fields=100) if ("form" in ctype) else {}
        request.state.form = form
        token = form.get("csrf") if form else request.headers.get("x-csrf-token")
        if not csrf_ok(request.state.session, token):
            raise Problem(403, "CSRF check failed: reload the page and submit the form again")

    app = FastAPI(title="lmlab annotate", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(csrf_guard)])
    app.state.engine, app.state.factory = engine, factory
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def session_mw(request: Request, call_next):
        data = sess.loads(request.cookies.get(Sessions.cookie))
        request.state.session = data or sess.new()
        request.state.session_dirty = data is None
        response = await call_next(request)
        if request.state.session_dirty:
            response.set_cookie(Sessions.cookie, sess.dumps(request.state.session), httponly=True, samesite="lax",
                                secure=secure_cookies, max_age=sess.max_age_s)
        return response

    @app.exception_handler(Redirect)
    async def _redirect(request, exc: Redirect):
        return RedirectResponse(exc.url, status_code=303)

    @app.exception_handler(Problem)
    async def _problem(request, exc: Problem):
        return page(request, "error.html", {"message": exc.message}, status=exc.status)

    @app.exception_handler(404)
    async def _404(request, exc):
        return page(request, "error.html", {"message": "Not found"}, status=404)

    def page(request: Request, name: str, ctx: dict | None = None, status: int = 200, user=None) -> HTMLResponse:
        ctx = dict(ctx or {})
        ctx.setdefault("user", user if user is not None else getattr(request.state, "user", None))
        ctx.update(request=request, csrf=request.state.session["csrf"])
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def form(request: Request) -> dict:
        return getattr(request.state, "form", {}) or {}

    def current_user(request: Request) -> User | None:
        uid = request.state.session.get("uid")
        if uid is None:
            return None
        with read(factory) as s:
            u = s.get(User, uid)
        if u is None or not u.active:
            return None
        request.state.user = u
        return u

    def need(role: str = "annotator"):
        def dep(request: Request) -> User:
            u = current_user(request)
            if u is None:
                raise Redirect("/login?" + urlencode({"next": request.url.path}))
            if not u.can(role):
                raise Problem(403, f"This page is for {role}s.")
            return u
        return dep

    def transact(fn):
        for attempt in (0, 1):
            try:
                with write(factory) as s:
                    return fn(s)
            except (IntegrityError, StaleDataError):
                if attempt:
                    raise

    # ------------------------------------------------------------------------------------ accounts
    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz():
        with read(factory) as s:
            s.execute(select(1))
        return "ok"

    @app.get("/login")
    def login_page(request: Request, next: str = "/"):
        return page(request, "login.html", {"next": next})

    def _safe_next(url: str) -> str:
        return url if url.startswith("/") and not url.startswith("//") else "/"

    @app.post("/login")
    def login(request: Request):
        f = form(request)
        username, password = str(f.get("username", "")), str(f.get("password", ""))
        nxt = _safe_next(str(f.get("next", "/")))
        ip = request.client.host if request.client else "?"
        key = f"{ip}|{username.lower()}"
        wait = max(limiter.blocked(key), ip_limiter.blocked(ip))
        if wait:
            return page(request, "login.html", {"error": f"Too many failed logins: try again in {int(wait) + 1} s.",
                                                "next": nxt, "username": username}, status=429)
        with read(factory) as s:
            u = s.scalar(select(User).where(func.lower(User.username) == username.lower()))
        if not verify_password(u.password_hash if u else None, password) or not u.active:
            limiter.fail(key)
            ip_limiter.fail(ip)
            return page(request, "login.html", {"error": "Wrong username or password.", "next": nxt,
                                                "username": username}, status=401)
        limiter.reset(key)
        request.state.session = sess.new(u.id)          # a fresh session (and CSRF token) on login
        request.state.session_dirty = True
        return RedirectResponse(nxt, status_code=303)

    @app.post("/logout")
    def logout(request: Request):
        request.state.session = sess.new()
        request.state.session_dirty = True
        return RedirectResponse("/login", status_code=303)

    @app.get("/signup")
    def signup_page(request: Request, token: str = ""):
        with read(factory) as s:
            inv = s.scalar(select(Invite).where(Invite.token == token)) if token else None
        if inv is None or inv.used_by is not None:
            return page(request, "error.html", {"message": "This invite link is not valid (unknown or already used)."},
                        status=404)
        return page(request, "signup.html", {"token": token, "invite": inv})

    @app.post("/signup")
    def signup(request: Request):
        f = form(request)
        token, username = str(f.get("token", "")), str(f.get("username", "")).strip()
        if f.get("password") != f.get("password2"):
            err = "The two passwords differ."
        else:
            try:
                u = transact(lambda s: ops.redeem_invite(s, token, username, str(f.get("password", ""))))
            except ops.Invalid as e:
                err = str(e)
            else:
                request.state.session = sess.new(u.id)
                request.state.session_dirty = True
                return RedirectResponse("/", status_code=303)
        with read(factory) as s:
            inv = s.scalar(select(Invite).where(Invite.token == token))
        return page(request, "signup.html", {"token": token, "invite": inv, "error": err, "username": username},
                    status=400)

    @app.get("/account")
    def account_page(request: Request, user: User = Depends(need())):
        return page(request, "account.html", {})

    @app.post("/account")
    def account(request: Request, user: User = Depends(need())):
        def fn(s):
            u = s.get(User, user.id)
            u.languages = ",".join(ops.parse_languages(str(form(request).get("languages", ""))))
            return u
        try:
            u = transact(fn)
        except ops.Invalid as e:
            return page(request, "account.html", {"error": str(e)}, status=400)
        return page(request, "account.html", {"saved": True}, user=u)

    # ----------------------------------------------------------------------------------------- home
    @app.get("/")
    def home(request: Request, user: User = Depends(need())):
        with read(factory) as s:
            prog = [r for r in ops.progress(s) if not user.language_list or r["language"] in user.language_list]
            drafts = list(s.scalars(select(Pair).where(Pair.author_id == user.id, Pair.status == "draft")
                                    .order_by(Pair.id.desc()).limit(20)))
            mine = s.scalar(select(func.count(Pair.id)).where(Pair.author_id == user.id, Pair.status != "draft"))
            waiting = s.scalar(select(func.count(Pair.id)).where(Pair.status == "submitted")) if user.can("reviewer") else 0
        return page(request, "home.html", {"progress": prog, "drafts": drafts, "mine": mine, "waiting": waiting})

    # ------------------------------------------------------------------------------ original annotation
    def _lang_choice(user: User, lang: str | None) -> str:
        langs = user.language_list
        if lang:
            return lang
        if not langs:
            raise Problem(400, "You have no languages yet: add them on your account page.")
        return langs[0]

    @app.get("/annotate/new")
    def new_page(request: Request, lang: str = "", user: User = Depends(need())):
        return page(request, "annotate.html", {"mode": "new", "lang": _lang_choice(user, lang),
                                               "client_key": ops.new_key(), "prompt": "", "completion": ""})

    @app.post("/annotate/new")
    def new_pair(request: Request, user: User = Depends(need())):
        f = form(request)
        lang, prompt, completion = str(f.get("language", "")), str(f.get("prompt", "")), str(f.get("completion", ""))
        try:
            p = transact(lambda s: ops.create_pair(s, user, lang, prompt, completion, submit=f.get("action") != "draft",
                                                   client_key=str(f.get("client_key", "")) or None))
        except (ops.Invalid, ops.Denied) as e:
            return page(request, "annotate.html", {"mode": "new", "lang": lang or _lang_choice(user, None),
                                                   "client_key": f.get("client_key") or ops.new_key(),
                                                   "prompt": prompt, "completion": completion, "error": str(e)},
                        status=getattr(e, "status", 400))
        return RedirectResponse(f"/pairs/{p.id}?saved=1", status_code=303)

    # --------------------------------------------------------------------------------- pairs & edits
    def _pair(user: User, pair_id: int):
        with read(factory) as s:
            try:
                p = ops.visible_pair(s, user, pair_id)
            except ops.Denied as e:
                raise Problem(e.status, str(e)) from None
            revs = list(s.scalars(select(Revision).where(Revision.pair_id == p.id).order_by(Revision.number)))
            names = dict(s.execute(select(User.id, User.username)).all())
            ratings = list(s.scalars(select(Rating).where(Rating.pair_id == p.id).order_by(Rating.id)))
        return p, revs, names, ratings

    @app.get("/pairs/{pair_id}")
    def pair_page(request: Request, pair_id: int, a: int = 0, b: int = 0, saved: int = 0,
                  user: User = Depends(need())):
        p, revs, names, ratings = _pair(user, pair_id)
        by_num = {r.number: r for r in revs}
        ra, rb = by_num.get(a or 1, revs[0]), by_num.get(b or p.revision, revs[-1])
        can_edit = p.status not in ("approved",) and (
            (p.status == "draft" and p.author_id == user.id) or
            (p.status != "draft" and (user.role == "admin" or p.language in user.language_list)))
        can_rate = (p.status != "draft" and user.id not in (p.author_id, p.last_editor_id)
                    and (user.role == "admin" or p.language in user.language_list)
                    and not any(r.user_id == user.id for r in ratings))
        return page(request, "pair.html", {"p": p, "revs": revs, "names": names, "ratings": ratings, "ra": ra,
                                           "rb": rb, "can_edit": can_edit, "can_rate": can_rate, "saved": saved,
                                           "client_key": ops.new_key()})

    @app.get("/pairs/{pair_id}/edit")
    def edit_page(request: Request, pair_id: int, user: User = Depends(need())):
        p, revs, names, _ = _pair(user, pair_id)
        return page(request, "annotate.html", {"mode": "edit", "p": p, "lang": p.language, "prompt": p.prompt,
                                               "completion": p.completion, "version": p.version,
                                               "original": revs[0], "names": names})

    @app.post("/pairs/{pair_id}/edit")
    def edit(request: Request, pair_id: int, user: User = Depends(need())):
        f = form(request)
        prompt, completion = str(f.get("prompt", "")), str(f.get("completion", ""))
        try:
            version = int(f.get("version", ""))
        except ValueError:
            raise Problem(400, "version: missing") from None
        try:
            p = transact(lambda s: ops.edit_pair(s, user, pair_id, version, prompt, completion,
                                                 submit=f.get("action") != "draft"))
        except ops.Conflict as c:
            p, revs, names, _ = _pair(user, pair_id)
            return page(request, "conflict.html", {"p": p, "mine": c.submitted, "names": names,
                                                   "diff_prompt": word_diff(p.prompt, prompt),
                                                   "diff_completion": word_diff(p.completion, completion)},
                        status=409)
        except ops.Denied as e:
            raise Problem(e.status, str(e)) from None
        except ops.Invalid as e:
            p, revs, names, _ = _pair(user, pair_id)
            return page(request, "annotate.html", {"mode": "edit", "p": p, "lang": p.language, "prompt": prompt,
                                                   "completion": completion, "version": version, "original": revs[0],
                                                   "names": names, "error": str(e)}, status=400)
        return RedirectResponse(f"/pairs/{p.id}?saved=1", status_code=303)

    @app.get("/reannotate")
    def reannotate(request: Request, lang: str = "", user: User = Depends(need())):
        with read(factory) as s:
            p = ops.next_to_reannotate(s, user, lang or None)
        if p is None:
            return page(request, "empty.html", {"what": "pairs to re-annotate", "lang": lang})
        return RedirectResponse(f"/pairs/{p.id}/edit", status_code=303)

    # ------------------------------------------------------------------------------------- feedback
    @app.get("/feedback/rate")
    def rate_page(request: Request, lang: str = "", user: User = Depends(need())):
        with read(factory) as s:
            p = ops.next_to_rate(s, user, lang or None)
        if p is None:
            return page(request, "empty.html", {"what": "pairs to rate", "lang": lang})
        return page(request, "rate.html", {"p": p, "client_key": ops.new_key(), "lang": lang})

    @app.post("/pairs/{pair_id}/rate")
    def rate(request: Request, pair_id: int, user: User = Depends(need())):
        f = form(request)
        try:
            score = int(f.get("score", "0"))
        except ValueError:
            score = 0
        try:
            transact(lambda s: ops.rate_pair(s, user, pair_id, score, str(f.get("reason", "")),
                                             str(f.get("client_key", "")) or None))
        except ops.Denied as e:
            raise Problem(e.status, str(e)) from None
        except ops.Invalid as e:
            with read(factory) as s:
                p = ops.visible_pair(s, user, pair_id)
            return page(request, "rate.html", {"p": p, "client_key": f.get("client_key") or ops.new_key(),
                                               "error": str(e), "reason": f.get("reason", "")}, status=400)
        nxt = str(f.get("next", ""))
        return RedirectResponse(_safe_next(nxt) if nxt else f"/pairs/{pair_id}?saved=1", status_code=303)

    @app.get("/feedback/compare")
    def compare_page(request: Request, lang: str = "", user: User = Depends(need())):
        with read(factory) as s:
            c = ops.next_comparison(s, user, lang or None)
        if c is None:
            return page(request, "empty.html", {"what": "comparisons to judge", "lang": lang})
        return page(request, "compare.html", {"c": c, "client_key": ops.new_key(), "lang": lang})

    @app.post("/comparisons/{cid}/judge")
    def judge(request: Request, cid: int, user: User = Depends(need())):
        f = form(request)
        try:
            transact(lambda s: ops.prefer(s, user, cid, str(f.get("choice", "")), str(f.get("reason", "")),
                                          str(f.get("client_key", "")) or None))
        except ops.Denied as e:
            raise Problem(e.status, str(e)) from None
        except ops.Invalid as e:
            with read(factory) as s:
                c = s.get(Comparison, cid)
            return page(request, "compare.html", {"c": c, "client_key": f.get("client_key") or ops.new_key(),
                                                  "error": str(e), "reason": f.get("reason", "")}, status=400)
        return RedirectResponse("/feedback/compare?" + urlencode({"lang": f.get("lang", ""), "saved": 1}),
                                status_code=303)

    # --------------------------------------------------------------------------------------- review
    @app.get("/review")
    def review_page(request: Request, lang: str = "", user: User = Depends(need("reviewer"))):
        with read(factory) as s:
            pairs, prefs = ops.review_queue(s, user, lang or None)
            names = dict(s.execute(select(User.id, User.username)).all())
            firsts = {r.pair_id: r for r in s.scalars(select(Revision).where(
                Revision.pair_id.in_([p.id for p in pairs]), Revision.number == 1))}
            for pref in prefs:
                _ = pref.comparison
        return page(request, "review.html", {"pairs": pairs, "prefs": prefs, "names": names, "firsts": firsts,
                                             "lang": lang})

    def _review(request, user, fn):
        f = form(request)
        try:
            version = int(f.get("version", ""))
        except ValueError:
            raise Problem(400, "version: missing") from None
        approve = f.get("decision") == "approve"
        if f.get("decision") not in ("approve", "reject"):
            raise Problem(400, "decision: approve or reject")
        try:
            transact(lambda s: fn(s, user, version, approve, str(f.get("comment", ""))))
        except ops.Conflict:
            raise Problem(409, "Someone changed this item while you were reviewing it; the queue now shows its "
                               "current version.") from None
        except ops.Denied as e:
            raise Problem(e.status, str(e)) from None
        except ops.Invalid as e:
            raise Problem(400, str(e)) from None
        return RedirectResponse("/review?" + urlencode({"lang": f.get("lang", "")}), status_code=303)

    @app.post("/review/pairs/{pair_id}")
    def review_pair(request: Request, pair_id: int, user: User = Depends(need("reviewer"))):
        return _review(request, user, lambda s, u, v, ok, c: ops.review_pair(s, u, pair_id, v, ok, c))

    @app.post("/review/preferences/{pref_id}")
    def review_pref(request: Request, pref_id: int, user: User = Depends(need("reviewer"))):
        return _review(request, user, lambda s, u, v, ok, c: ops.review_preference(s, u, pref_id, v, ok, c))

    # ---------------------------------------------------------------------------- browse & progress
    @app.get("/browse")
    def browse(request: Request, language: str = "", status: str = "", annotator: str = "", q: str = "",
               page_no: int = 1, user: User = Depends(need())):
        with read(factory) as s:
            rows, total = ops.search_pairs(s, user, language, status, annotator, q[:200], page_no)
            names = dict(s.execute(select(User.id, User.username)).all())
            langs = [x for (x,) in s.execute(select(Pair.language).distinct().order_by(Pair.language))]
        args = {"language": language, "status": status, "annotator": annotator, "q": q}
        return page(request, "browse.html", {"rows": rows, "total": total, "names": names, "langs": langs,
                                             "f": args, "page_no": page_no,
                                             "more": page_no * 50 < total, "qs": urlencode(args)})

    @app.get("/progress")
    def progress_page(request: Request, user: User = Depends(need())):
        with read(factory) as s:
            return page(request, "progress.html", {"progress": ops.progress(s), "board": ops.leaderboard(s)})

    # ---------------------------------------------------------------------------------------- admin
    @app.get("/admin")
    def admin_page(request: Request, user: User = Depends(need("admin")), invite: str = "", msg: str = ""):
        with read(factory) as s:
            users = list(s.scalars(select(User).order_by(User.id)))
            invites = list(s.scalars(select(Invite).where(Invite.used_by.is_(None)).order_by(Invite.id.desc())))
            counts = {"pairs": s.scalar(select(func.count(Pair.id))),
                      "comparisons": s.scalar(select(func.count(Comparison.id)))}
        base = str(request.base_url).rstrip("/")
        return page(request, "admin.html", {"users": users, "invites": invites, "base": base, "new_invite": invite,
                                            "msg": msg, "counts": counts})

    @app.post("/admin/invites")
    def admin_invite(request: Request, user: User = Depends(need("admin"))):
        f = form(request)
        try:
            inv = transact(lambda s: ops.create_invite(s, user, str(f.get("role", "annotator")),
                                                       str(f.get("languages", ""))))
        except ops.Invalid as e:
            raise Problem(400, str(e)) from None
        return RedirectResponse("/admin?" + urlencode({"invite": inv.token}), status_code=303)

    @app.post("/admin/users/{uid}")
    def admin_user(request: Request, uid: int, user: User = Depends(need("admin"))):
        f = form(request)
        try:
            transact(lambda s: ops.set_user(s, user, uid, role=str(f.get("role")) if f.get("role") else None,
                                            languages=str(f["languages"]) if "languages" in f else None,
                                            active=(f.get("active") == "1") if "active" in f else None))
        except ops.Invalid as e:
            raise Problem(400, str(e)) from None
        except ops.Denied as e:
            raise Problem(e.status, str(e)) from None
        return RedirectResponse("/admin?msg=saved", status_code=303)

    @app.post("/admin/import")
    async def admin_import(request: Request):
        await _async_user(request, "admin")          # 303 to the login page or 403 for non-admins
        f = form(request)
        up = f.get("file")
        if up is None or not getattr(up, "filename", ""):
            raise Problem(400, "file: choose a .jsonl or .csv file")
        suffix = Path(up.filename).suffix.lower()
        if suffix not in (".jsonl", ".csv", ".json"):
            raise Problem(400, f"file {up.filename!r}: expected .jsonl or .csv")
        data = await up.read()
        from starlette.concurrency import run_in_threadpool

        def work():
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / f"upload{suffix}"
                path.write_bytes(data)
                rows = transfer.read_rows(path)
                return transact(lambda s: transfer.import_rows(s, rows, str(f.get("language", "")) or None,
                                                               source=f"import:{Path(up.filename).name}"[:128]))
        try:
            got = await run_in_threadpool(work)
        except (ValueError, UnicodeDecodeError) as e:
            raise Problem(400, f"import: {str(e).replace(str(tempfile.gettempdir()), '')}") from None
        return RedirectResponse("/admin?" + urlencode({"msg": f"imported {got['pairs']} pairs and "
                                                                f"{got['comparisons']} comparisons"}), status_code=303)

    async def _async_user(request: Request, role: str) -> User:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(need(role), request)

    @app.post("/admin/seed-bible")
    def admin_seed(request: Request, user: User = Depends(need("admin"))):
        from .seeds import bible_comparisons, bible_pairs

        f = form(request)
        try:
            langs = ops.parse_languages(str(f.get("languages", "")))
            n = max(1, min(500, int(f.get("n", "20"))))
            pairs, cmps = bible_pairs(langs, n), bible_comparisons(langs, n)
        except ValueError as e:
            raise Problem(400, str(e)) from None

        def fn(s):
            for r in pairs:
                ops.add_seed_pair(s, r["language"], r["prompt"], r["completion"], r["source"])
            for r in cmps:
                ops.add_comparison(s, r["language"], r["prompt"], r["a"], r["b"], r["source"])
        transact(fn)
        return RedirectResponse("/admin?" + urlencode({"msg": f"added {len(pairs)} pairs and {len(cmps)} comparisons"}),
                                status_code=303)

    # --------------------------------------------------------------------------------------- export
    @app.get("/export/{name}.jsonl")
    def export_jsonl(name: str, language: str = "", user: User = Depends(need("reviewer"))):
        fns = {"sft": transfer.sft_rows, "preferences": transfer.preference_rows, "ratings": transfer.rating_rows}
        if name not in fns:
            raise Problem(404, f"no export {name!r} (sft, preferences, ratings)")
        with read(factory) as s:
            body = transfer.jsonl(fns[name](s, [language] if language else None))
        return Response(body, media_type="application/jsonl; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="{name}.jsonl"'})

    @app.get("/export/dataset.zip")
    def export_dataset(license: str = "apache-2.0", user: User = Depends(need("reviewer"))):
        if not re.fullmatch(r"[a-z0-9.+-]{2,40}", license):
            raise Problem(400, "license: an SPDX-like identifier such as apache-2.0 or cc-by-4.0")
        with tempfile.TemporaryDirectory() as d, read(factory) as s:
            transfer.export_hf(s, Path(d) / "dataset", license=license)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                for p in sorted((Path(d) / "dataset").rglob("*")):
                    if p.is_file():
                        z.write(p, p.relative_to(Path(d)))
        return Response(buf.getvalue(), media_type="application/zip",
                        headers={"content-disposition": 'attachment; filename="lmlab-annotations.zip"'})

    guard = Guard(app, max_body, max_upload)
    guard.state, guard.fastapi = app.state, app
    return guard
