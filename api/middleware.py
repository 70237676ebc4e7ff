"""Authentication: who is calling (token from a cookie or a Bearer header), checked before marked
responders, and the rule that keeps other pages from acting with a user's cookies (SessionGuard)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import cachetools
import falcon

from api.revocations import RevokedTokens
from tracker import auth, roles
from tracker.config import normalized_origin
from tracker.errors import Unauthenticated
from tracker.users import User

COOKIES = ("access_token", "mojolicious")
# The methods that change state (those a route has or may get): a cookie session acts with them
# only as SessionGuard allows.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NOT_JSON = "a request that uses or opens a cookie session must have Content-Type: application/json"
CROSS_ORIGIN = "refused: a cookie session is used and opened only from the tracker's own origin"

_Responder = TypeVar("_Responder", bound=Callable[..., Any])
_REQUIRED = "_tracker_permission"
_LOGGED_IN = ""  # marks a responder that needs a user but no particular permission
_OPENS_SESSION = "_tracker_opens_session"
_SAME_ORIGIN_FETCHES = frozenset({"same-origin", "none"})  # Sec-Fetch-Site of the page itself, or of the user


def requires(permission: str | None = None) -> Callable[[_Responder], _Responder]:
    """Mark a responder (``on_get``, ``on_post``, …) as needing a logged-in caller holding ``permission``.

    With no permission, any logged-in caller will do. Unmarked responders are public.
    """

    def mark(responder: _Responder) -> _Responder:
        setattr(responder, _REQUIRED, permission or _LOGGED_IN)
        return responder

    return mark


def opens_session(responder: _Responder) -> _Responder:
    """Mark a public responder that sets the session cookies (the login): SessionGuard checks it too."""
    setattr(responder, _OPENS_SESSION, True)
    return responder


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type is JSON's: ``application/json`` in any case, parameters allowed."""
    return content_type is not None and content_type.partition(";")[0].strip().lower() == "application/json"


def from_own_origin(origin: str | None, fetch_site: str | None, own: Callable[[], frozenset[str]]) -> bool:
    """Whether a request with these ``Origin`` and ``Sec-Fetch-Site`` headers (None: absent) comes
    from one of the ``own()`` origins (normalized; asked only when there is an Origin).

    Without either header it may: clients other than browsers send neither, and a browser that
    sends no Origin also keeps a page from setting Content-Type: application/json on another
    origin's request unless a preflight allows it, which the tracker never does.
    """
    if fetch_site is not None and fetch_site.strip().lower() not in _SAME_ORIGIN_FETCHES:
        return False
    return origin is None or normalized_origin(origin) in own()


class SessionGuard:
    """The rule for state-changing requests that use the session cookies, or open a session (the
    login): they must come from the tracker's own origin (else 403) and declare their body JSON
    (else 415), so that no other page, not even one on the same site (another port, a sibling
    subdomain, which SameSite=Strict lets send the cookies), can act with them.

    The tracker's own origins are ``public`` (TRACKER_PUBLIC_ORIGIN, normalized), else the
    request's own scheme and Host.
    """

    def __init__(self, public: tuple[str, ...] = ()) -> None:
        self._public = frozenset(public)

    def check(self, req: falcon.Request, opening: bool = False) -> None:
        """Raise falcon.HTTPForbidden or falcon.HTTPUnsupportedMediaType unless ``req`` may act.

        ``opening``: a login, which needs no declared type without a body (it is refused as
        missing its credentials, as SPEC §2 says); a request with cookies needs one always.
        """
        if not from_own_origin(req.get_header("Origin"), req.get_header("Sec-Fetch-Site"), lambda: self._own(req)):
            raise falcon.HTTPForbidden(description=CROSS_ORIGIN)
        if not is_json(req.content_type) and not (opening and not req.content_length):
            raise falcon.HTTPUnsupportedMediaType(description=NOT_JSON)

    def _own(self, req: falcon.Request) -> frozenset[str]:
        if self._public:
            return self._public
        own = normalized_origin(f"{req.scheme}://{req.netloc}")
        return frozenset() if own is None else frozenset({own})


class UserCache:
    """Users by name, remembered for ``ttl_s`` after they were looked up — absent ones too, so a
    deleted user stays out. Thread-safe; at most ``_MAX_ENTRIES`` (the least recently used leave).

    Bounds how long a deleted user's tokens keep working, and how long a role change takes.
    ``clock`` times the entries (any epoch); ``wall_clock`` (seconds since the epoch, as tokens'
    ``iat``) says when each lookup began, for ``looked_up_since``.
    """

    _MAX_ENTRIES = 10_000

    def __init__(
        self,
        lookup: Callable[[str], User | None],
        ttl_s: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._lookup = lookup
        self._clock = clock
        self._wall_clock = wall_clock
        # (looked up at, on the wall clock, the user or None): each leaves ttl_s after the lookup
        # began, not after it ended.
        self._entries: cachetools.TLRUCache[str, tuple[float, float, User | None], float] = cachetools.TLRUCache(
            self._MAX_ENTRIES, ttu=lambda _name, kept, _now: kept[0] + ttl_s, timer=clock
        )
        self._lock = threading.Lock()

    def get(self, username: str) -> User | None:
        """The user, or None when there is none; may raise what ``lookup`` raises (then nothing is kept)."""
        try:
            with self._lock:
                return self._entries[username][2]
        except KeyError:
            pass
        return self._look_up(username)

    def looked_up_since(self, username: str, since: float) -> User | None:
        """The user as a lookup begun at or after ``since`` (wall clock) found it: the kept one if
        it was, else looked up again. Raises as ``get``."""
        with self._lock:
            kept = self._entries.get(username)
        if kept is not None and kept[1] >= since:
            return kept[2]
        return self._look_up(username)

    def _look_up(self, username: str) -> User | None:
        looked_up_at, looked_up_wall = self._clock(), self._wall_clock()
        user = self._lookup(username)
        with self._lock:
            self._entries[username] = (looked_up_at, looked_up_wall, user)
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
    """Falcon middleware: before a marked responder runs, puts the caller on ``req.context.user``
    (and its token's claims on ``req.context.claims``); refuses a token a logout ended (``revoked``);
    holds every state-changing request that uses the session cookies, and every login, to
    ``guard``'s rule.

    Raises Unauthenticated (no, invalid, expired or ended token, or no such user, or not its account),
    auth.PermissionDenied (the caller's role lacks the responder's permission), and
    falcon.HTTPForbidden or falcon.HTTPUnsupportedMediaType (SessionGuard).
    """

    def __init__(
        self, tokens: auth.Tokens | VerifiedTokens, users: UserCache, guard: SessionGuard, revoked: RevokedTokens
    ) -> None:
        self._tokens = tokens
        self._users = users
        self._guard = guard
        self._revoked = revoked

    def process_resource(
        self, req: falcon.Request, _resp: falcon.Response, resource: object, _params: dict[str, Any]
    ) -> None:
        # Sinks and 404s come with no resource; methods a resource lacks have no responder (405).
        responder = getattr(resource, "on_" + req.method.lower(), None)
        permission = getattr(responder, _REQUIRED, None)
        if permission is None:
            if getattr(responder, _OPENS_SESSION, False):
                self._guard.check(req, opening=True)
            return
        token, from_cookie = credentials_of(req)
        if token is None:
            raise Unauthenticated()
        claims = self._tokens.verify(token)
        if self._revoked.is_revoked(claims.token_id):
            raise Unauthenticated()  # ended by a logout
        user = self._users.get(claims.username)
        if user is None or user.account_id != claims.account_id:
            # The account this process remembers may be older than the token (deleted, and made
            # again since): look again, unless it was looked up after the token was issued (iat
            # holds whole seconds), so that an old account's token costs no lookup.
            user = self._users.looked_up_since(claims.username, claims.issued_at + 1)
            if user is None or user.account_id != claims.account_id:
                raise Unauthenticated()
        # Who is calling first (bad credentials are a 401 wherever they come from), then whether
        # the cookies may act from where the request comes from.
        if from_cookie and req.method in WRITE_METHODS:
            self._guard.check(req)
        if permission != _LOGGED_IN:
            roles.require(user.role, permission)
        req.context.user = user
        req.context.claims = claims


def credentials_of(req: falcon.Request) -> tuple[str | None, bool]:
    """The token the request carries, ``Authorization: Bearer`` first, then either cookie (None if
    none), and whether it came from a cookie."""
    scheme, _, token = (req.get_header("Authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), False
    for name in COOKIES:
        values = req.get_cookie_values(name)
        if values and values[0]:
            return values[0], True
    return None, False
