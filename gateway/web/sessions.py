"""The console's logins: who may log in, sessions, CSRF tokens and the login throttle.

In: a name and password from the login form (checked against ``[[http.admins]]``'s scrypt
hashes, off the event loop; an unknown name costs what a wrong password costs), the
session cookie of each request, and a clock. Out: a :class:`Session` (the admin's name and
the CSRF token every form of the session carries), or None. Sessions live in the daemon's
memory (a restart logs everyone out) and end ``http.admin_session_seconds`` after their
last request; their ids are 256 random bits. The login form has a CSRF token of its own,
bound to a cookie set with the form (:meth:`Sessions.login_token`). Failed logins are
throttled per client address as SMTP AUTH is (:class:`~gateway.throttle.AuthThrottle`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from gateway import passwords
from gateway.settings import HttpSettings
from gateway.throttle import AuthThrottle

SESSION_COOKIE = "fgw_session"
LOGIN_COOKIE = "fgw_login"
_MAX_SESSIONS = 1000
MAX_NAME = 64
MAX_PASSWORD = 1024


@dataclass
class Session:
    name: str
    csrf: str
    expires: float


def _key(sid: str) -> str:
    return hashlib.sha256(sid.encode("ascii", "replace")).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two tokens."""
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


class Sessions:
    def __init__(self, http: HttpSettings, clock: Callable[[], float]) -> None:
        self.lifetime = http.admin_session_seconds
        self.clock = clock
        self.admins = {a.name: a.password_hash for a in http.admins}
        self.throttle = AuthThrottle(http.login_failures_before_backoff, http.login_backoff_seconds, clock)
        self._sessions: dict[str, Session] = {}  # by the SHA-256 of the id
        self._login_key = secrets.token_bytes(32)

    # -- the login form ---------------------------------------------------------

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_urlsafe(16)

    def login_token(self, nonce: str) -> str:
        """The login form's CSRF token for the nonce in its cookie."""
        return hmac.new(self._login_key, nonce.encode("utf-8", "replace"), hashlib.sha256).hexdigest()

    def login_token_ok(self, nonce: str, token: str) -> bool:
        return bool(nonce) and same(self.login_token(nonce), token)

    async def check(self, name: str, password: str) -> bool:
        """Whether ``name`` and ``password`` are a console user's (scrypt, in a thread)."""
        stored = self.admins.get(name) if len(name) <= MAX_NAME else None
        if len(password) > MAX_PASSWORD:
            password = ""
        return await asyncio.to_thread(passwords.verify_password, password.encode(), stored)

    # -- sessions -----------------------------------------------------------------

    def open(self, name: str) -> str:
        """A new session for ``name``; its id (the cookie's value)."""
        now = self.clock()
        if len(self._sessions) >= _MAX_SESSIONS:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            while len(self._sessions) >= _MAX_SESSIONS:  # the oldest go first
                self._sessions.pop(next(iter(self._sessions)))
        sid = secrets.token_urlsafe(32)
        self._sessions[_key(sid)] = Session(name, secrets.token_urlsafe(32), now + self.lifetime)
        return sid

    def get(self, sid: str | None) -> Session | None:
        """The live session ``sid`` names (its end moved on), or None (no such id, or it ended)."""
        if not sid or len(sid) > 100:
            return None
        key = _key(sid)
        session = self._sessions.get(key)
        now = self.clock()
        if session is None:
            return None
        if session.expires <= now or session.name not in self.admins:
            del self._sessions[key]
            return None
        session.expires = now + self.lifetime
        return session

    def close(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(_key(sid), None)
