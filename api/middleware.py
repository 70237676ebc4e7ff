"""Authentication: who is calling (token from a cookie or a Bearer header), checked before marked responders."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import cachetools
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
    """Users by name, remembered for ``ttl_s`` after they were looked up — absent ones too, so a
    deleted user stays out. Thread-safe; at most ``_MAX_ENTRIES`` (the least recently used leave).

    Bounds how long a deleted user's tokens keep working, and how long a role change takes.
    """

    _MAX_ENTRIES = 10_000

    def __init__(self, lookup: Callable[[str], User | None], ttl_s: float, clock: Callable[[], float]) -> None:
        self._lookup = lookup
        self._clock = clock
        # (looked up at, the user or None): each leaves ttl_s after the lookup began, not after it ended.
        self._entries: cachetools.TLRUCache[str, tuple[float, User | None], float] = cachetools.TLRUCache(
            self._MAX_ENTRIES, ttu=lambda _name, kept, _now: kept[0] + ttl_s, timer=clock
        )
        self._lock = threading.Lock()

    def get(self, username: str) -> User | None:
        """The user, or None when there is none; may raise what ``lookup`` raises (then nothing is kept)."""
        try:
            with self._lock:
                return self._entries[username][1]
        except KeyError:
            pass
        looked_up_at = self._clock()
        user = self._lookup(username)
        with self._lock:
            self._entries[username] = (looked_up_at, user)
        return user


class VerifiedTokens:
    """Tokens whose signature has been checked, each remembered until it expires. Thread-safe; at
    most ``_MAX_ENTRIES`` (the least recently used leave).

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
        # Claims by digest, each until its exp (on wall_clock).
        self._entries: cachetools.TLRUCache[bytes, auth.Claims, float] = cachetools.TLRUCache(
            self._MAX_ENTRIES, ttu=lambda _digest, claims, _now: claims.expires_at, timer=wall_clock
        )
        self._lock = threading.Lock()

    def verify(self, token: str) -> auth.Claims:
        """The claims of a valid token; raises Unauthenticated otherwise."""
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        try:
            with self._lock:
                return self._entries[key]
        except KeyError:
            pass
        claims = self._tokens.verify(token)
        if not self._wall_clock() < claims.expires_at:
            raise Unauthenticated()  # expired on this cache's clock, as a remembered one would be
        with self._lock:
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
