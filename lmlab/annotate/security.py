"""Passwords (argon2id through argon2-cffi), sessions in signed cookies (itsdangerous), CSRF tokens and the
login rate limit.

The session cookie holds {uid, csrf, epoch} signed with the server secret (HMAC; it is not encrypted and holds
nothing secret). Every form carries the session's CSRF token and every POST must return it: the synchronizer
token pattern, checked with a constant-time comparison. Anonymous visitors get a session too (uid None), so
the login and sign-up forms are protected the same way.
"""
from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

_hasher = PasswordHasher()
# a hash to verify against when the user does not exist, so that both cases take the same time
_DUMMY = _hasher.hash("not a password" + secrets.token_hex(4))
MIN_PASSWORD = 8


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password: at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


class Sessions:
    """Signs and reads the session cookie."""

    cookie = "lmlab_session"

    def __init__(self, secret: str, max_age_s: int = 14 * 24 * 3600):
        if len(secret) < 16:
            raise ValueError("secret: at least 16 characters")
        self.serializer = URLSafeTimedSerializer(secret, salt="lmlab-annotate-session")
        self.max_age_s = max_age_s

    def new(self, uid: int | None = None) -> dict:
        return {"uid": uid, "csrf": secrets.token_urlsafe(24)}

    def dumps(self, data: dict) -> str:
        return self.serializer.dumps(data)

    def loads(self, value: str | None) -> dict | None:
        if not value:
            return None
        try:
            data = self.serializer.loads(value, max_age=self.max_age_s)
        except BadSignature:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("csrf"), str) else None


def csrf_ok(session: dict | None, token: str | None) -> bool:
    return bool(session and token) and hmac.compare_digest(str(session["csrf"]), str(token))


class RateLimiter:
    """At most `limit` failures per key in a sliding window of `window_s` seconds (in memory, per process)."""

    def __init__(self, limit: int = 5, window_s: float = 300.0):
        self.limit, self.window_s = limit, window_s
        self._hits: dict[str, deque] = {}
        self._lock = threading.Lock()

    def _prune(self, key: str, t: float) -> deque:
        q = self._hits.setdefault(key, deque())
        while q and t - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked(self, key: str) -> float:
        """Seconds until `key` may try again (0 when it may now)."""
        with self._lock:
            t = time.monotonic()
            q = self._prune(key, t)
            return max(0.0, self.window_s - (t - q[0])) if len(q) >= self.limit else 0.0

    def fail(self, key: str) -> None:
        with self._lock:
            self._prune(key, time.monotonic()).append(time.monotonic())

    def reset(self, key: str) -> None:
        with self._lock:
            self._hits.pop(key, None)
