"""Authentication: who is calling (token from a cookie or a Bearer header), checked before marked responders."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import falcon

from tracker import auth, roles
from tracker.errors import Unauthenticated
from tracker.users import User

COOKIES = ("access_token", "mojolicious")

_Responder = TypeVar("_Responder", bound=Callable[..., Any])
_REQUIRED = "_tracker_permission"
_LOGGED_IN = ""  # marks a responder that needs a user but no particular permission


def requires(permission: str | None = None) -> Callable[[_Responder], _Responder]:
    """Mark a responder (``on_get``, ``on_post``, …) as needing a logged-in caller holding ``permission``.

    With no permission, any logged-in caller will do. Unmarked responders are public.
    """

    def mark(responder: _Responder) -> _Responder:
        setattr(responder, _REQUIRED, permission or _LOGGED_IN)
        return responder

    return mark


class UserCache:
    """Users by name, remembered for ``ttl_s`` — absent ones too, so a deleted user stays out.

    Bounds how long a deleted user's tokens keep working, and how long a role change takes.
    """

    _MAX_ENTRIES = 10_000

    def __init__(self, lookup: Callable[[str], User | None], ttl_s: float, clock: Callable[[], float]) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, User | None]] = {}
        self._lock = threading.Lock()

    def get(self, username: str) -> User | None:
        """The user, or None when there is none; may raise what ``lookup`` raises."""
        now = self._clock()
        with self._lock:
            cached = self._entries.get(username)
        if cached is not None and cached[0] > now:
            return cached[1]
        user = self._lookup(username)
        with self._lock:
            if len(self._entries) >= self._MAX_ENTRIES:
                self._entries.clear()  # names come from our own signed tokens, so this is rare
            self._entries[username] = (now + self._ttl_s, user)
        return user


class VerifiedTokens:
    """Tokens whose signature has been checked, each remembered until it expires.

    Checking an HS256 signature costs as much as the rest of a GET answered from the row cache
    (docs/performance.md), and a client sends the same token with every request. Keyed by the
    token's SHA-256 digest, so the tokens themselves are not kept. Only valid tokens are
    remembered, and never past their ``exp``: a remembered token is exactly one
    ``tokens.verify`` would accept now (with the same secret).
    """

    _MAX_ENTRIES = 10_000

    def __init__(self, tokens: auth.Tokens, wall_clock: Callable[[], float] = time.time) -> None:
        self._tokens = tokens
        self._wall_clock = wall_clock  # seconds since the epoch, as the tokens' exp is
        self._entries: dict[bytes, auth.Claims] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> auth.Claims:
        """The claims of a valid token; raises Unauthenticated otherwise."""
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        claims = self._entries.get(key)
        if claims is not None:
            if self._wall_clock() < claims.expires_at:
                return claims
            with self._lock:
                self._entries.pop(key, None)
            raise Unauthenticated()  # expired, as tokens.verify would say
        claims = self._tokens.verify(token)
        with self._lock:
            self._entries.pop(key, None)
            if len(self._entries) >= self._MAX_ENTRIES:
                # Valid tokens come only from logins (slow and throttled): the oldest can go.
                del self._entries[next(iter(self._entries))]
            self._entries[key] = claims
        return claims


class Authentication:
    """Falcon middleware: before a marked responder runs, puts the caller on ``req.context.user``.

    Raises Unauthenticated (no, invalid or expired token, or no such user) and
    auth.PermissionDenied (the caller's role lacks the responder's permission).
    """

    def __init__(self, tokens: auth.Tokens | VerifiedTokens, users: UserCache) -> None:
        self._tokens = tokens
        self._users = users

    def process_resource(
        self, req: falcon.Request, _resp: falcon.Response, resource: object, _params: dict[str, Any]
    ) -> None:
        # Sinks and 404s come with no resource; methods a resource lacks have no responder (405).
        responder = getattr(resource, "on_" + req.method.lower(), None)
        permission = getattr(responder, _REQUIRED, None)
        if permission is None:
            return
        token = credentials_of(req)
        if token is None:
            raise Unauthenticated()
        claims = self._tokens.verify(token)
        user = self._users.get(claims.username)
        if user is None or claims.predates(user.created_at):
            raise Unauthenticated()
        if permission != _LOGGED_IN:
            roles.require(user.role, permission)
        req.context.user = user


def credentials_of(req: falcon.Request) -> str | None:
    """The token the request carries: ``Authorization: Bearer`` first, then either cookie; None if none."""
    scheme, _, token = (req.get_header("Authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for name in COOKIES:
        values = req.get_cookie_values(name)
        if values and values[0]:
            return values[0]
    return None
