"""The dashboard (SPEC §7): the page at ``/`` with its style, script and icon, and the dead-letter count it shows."""

from __future__ import annotations

import hashlib
import importlib.resources
import threading
import time
from collections.abc import Callable

import cachetools
import falcon

from api.middleware import requires
from tracker import roles
from tracker.errors import DeadLettersUnavailable

# Everything the page loads comes from this server: no inline script or style, no other origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
)
# Each response is revalidated (a 304 when unchanged), so a new release shows at the next load.
CACHE_CONTROL = "no-cache"

# route → (file in api/static, Content-Type)
ASSETS: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/details.js": ("details.js", "text/javascript; charset=utf-8"),
    "/cancel.js": ("cancel.js", "text/javascript; charset=utf-8"),
    "/dashboard-stream.js": ("dashboard-stream.js", "text/javascript; charset=utf-8"),
    "/dashboard.svg": ("dashboard.svg", "image/svg+xml"),
}

DEAD_LETTER_COUNT_TTL_S = 5.0


def load(name: str) -> bytes:
    """The bytes of ``api/static/<name>`` (package data, so an installed wheel has them)."""
    return importlib.resources.files("api").joinpath("static", name).read_bytes()


class Asset:
    """GET of one file of the page: its bytes read once, an ETag of their digest, the page's headers."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self._body = body
        self._content_type = content_type
        self._tag = hashlib.sha256(body).hexdigest()[:32]

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.set_header("Cache-Control", CACHE_CONTROL)
        resp.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.set_header("ETag", f'"{self._tag}"')
        # Weak comparison, as RFC 9110 asks of If-None-Match; the tags are plain strings.
        if any(str(tag) in ("*", self._tag) for tag in req.if_none_match or ()):
            resp.status = falcon.HTTP_304
            return
        resp.content_type = self._content_type
        resp.data = self._body


class DeadLetterCount:
    """GET /api/{version}/dead_letters: how many messages the dead-letter queue holds (SPEC §9).

    ``count`` asks RabbitMQ (a connection each time); its answer is kept ``ttl_s`` seconds, so any
    number of open dashboards cost the broker at most one question per API worker that often.
    """

    def __init__(
        self,
        count: Callable[[], int],
        ttl_s: float = DEAD_LETTER_COUNT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._clock = clock
        self._lock = threading.Lock()  # one question at a time; the others wait for its answer
        # The one answer, (asked at, the count or the error it raised), until ttl_s after it was
        # asked for: a broker that is away is not asked again by every request either.
        self._kept: cachetools.TLRUCache[None, tuple[float, int | DeadLettersUnavailable], float] = (
            cachetools.TLRUCache(1, ttu=lambda _key, kept, _now: kept[0] + ttl_s, timer=clock)
        )

    @requires(roles.READ)
    def on_get(self, _req: falcon.Request, resp: falcon.Response, version: str) -> None:
        with self._lock:
            kept = self._kept.get(None)
            if kept is None:
                asked_at = self._clock()
                try:
                    kept = (asked_at, self._count())
                except DeadLettersUnavailable as exc:
                    kept = (asked_at, exc)
                self._kept[None] = kept
        answer = kept[1]
        if isinstance(answer, DeadLettersUnavailable):
            raise answer
        resp.media = {"response": {"count": answer}}
