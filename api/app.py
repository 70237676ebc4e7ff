"""The composition root: the Falcon app built from its dependencies, or from the environment."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import falcon
import falcon.media
import orjson
from falcon.routing import BaseConverter

from api import cancels, current_user, dashboard, errors, health, middleware, openapi, resources, rowcache, streams
from api.reads import JobReads
from api.revocations import RevokedTokens
from api.waits import WaitRegistry
from tracker import auth, broker
from tracker.config import Settings
from tracker.store import JobStore, make_engine, open_job_store, schema_problem
from tracker.store.cancels import CancelRequests
from tracker.users import LoginLimits, LoginThrottle, TokenRevocations, UserStore

SERVED_VERSIONS = ("4.0", "4.1", "5.0")
NOT_IMPLEMENTED = (
    "The requested api version is not implemented by this server. If you are using a newer client "
    "with an older server, you will need to use an older client version or upgrade your server."
)

_VERSION = re.compile(r"([0-9]+)\.([0-9]+)")
_UNDER_API = re.compile(r"/api/(?P<version>[^/]*)(?:/|$)")


def _newest_minors(versions: tuple[str, ...]) -> dict[int, int]:
    newest: dict[int, int] = {}
    for version in versions:
        major, minor = map(int, version.split("."))
        newest[major] = max(minor, newest.get(major, minor))
    return newest


_NEWEST_MINOR = _newest_minors(SERVED_VERSIONS)


@dataclasses.dataclass(frozen=True)
class Deps:
    """What the app is built from; tests pass their own."""

    jobs: JobStore
    users: UserStore
    throttle: LoginThrottle
    tokens: auth.Tokens
    settings: Settings
    clock: Callable[[], float] = time.monotonic  # for the user cache; seconds, any epoch
    reads: JobReads | None = None  # what GET of one job and of its timeline read from; None: ``jobs``, uncached
    revoked: RevokedTokens | None = None  # the tokens logouts ended; None: ended in this process only (tests)
    dead_letter_count: Callable[[], int] | None = None  # None: ask RabbitMQ at settings.amqp_url
    tell: cancels.Tell | None = None  # tells workers of cancellations; None: RabbitMQ at settings.amqp_url


def create_app(deps: Deps) -> falcon.App[falcon.Request, falcon.Response]:
    """The API over ``deps``. Opens no connection; every response body it gives is JSON."""
    users = middleware.UserCache(deps.users.get, deps.settings.user_cache_s, deps.clock)
    tokens = middleware.VerifiedTokens(deps.tokens)
    guard = middleware.SessionGuard(deps.settings.public_origins)
    revoked = deps.revoked if deps.revoked is not None else RevokedTokens(None)
    layers: list[Any] = [middleware.Authentication(tokens, users, guard, revoked)]
    reads = deps.reads or JobReads(deps.jobs)
    stream = streams.Streams(reads, revoked, max_streams=deps.settings.api_max_streams)
    if deps.settings.metrics:
        # Imported here, in the process that serves: tracker api's master must not load
        # prometheus_client before it has set the workers' multiprocess directory (api.server).
        from api import metrics

        layers.insert(0, metrics.RequestMetrics())  # first in, last out: it times the others too
        reads.waits.count_in(metrics.WaitMetrics())
        stream.count_in(metrics.StreamMetrics())
    app = falcon.App(middleware=layers, response_type=errors.ApiResponse)
    json = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    # JSON only: a form or other body is refused (415) rather than read as something else.
    app.req_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: json})
    app.resp_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: json})
    errors.register(app)

    app.router_options.converters["served"] = _ServedVersion
    secure = deps.settings.secure_cookies
    app.add_route("/api/{version:served}/async_status", resources.JobStatuses(deps.jobs, deps.settings, stream))
    app.add_route("/api/{version:served}/async_status/{job_id}", resources.JobStatus(reads, stream))
    app.add_route("/api/{version:served}/async_status/{job_id}/events", resources.JobTimeline(reads))
    cancel_requests = CancelRequests(deps.jobs)
    tell = deps.tell or broker.ControlPublisher(deps.settings).tell
    app.add_route("/api/{version:served}/async_status/{job_id}/cancel", cancels.JobCancel(cancel_requests, tell))
    app.add_route("/api/{version:served}/async_status/cancel", cancels.JobsCancel(cancel_requests, tell))
    app.add_route("/api/{version:served}/user/login", resources.Login(deps.users, deps.throttle, deps.tokens, secure))
    app.add_route("/api/{version:served}/user/logout", resources.Logout(revoked, secure))
    app.add_route("/api/{version:served}/user/current", current_user.CurrentUser())
    app.add_route("/api/{version:served}/ping", resources.Ping())
    app.add_route(
        "/api/{version:served}/openapi.json",
        resources.OpenApiDocument(openapi.document(SERVED_VERSIONS, deps.settings.webhook_origins)),
    )
    dead_letter_count = deps.dead_letter_count or functools.partial(broker.dead_letter_count, deps.settings)
    app.add_route("/api/{version:served}/dead_letters", dashboard.DeadLetterCount(dead_letter_count))
    for route, (name, content_type) in dashboard.ASSETS.items():
        app.add_route(route, dashboard.Asset(dashboard.load(name), content_type))
    app.add_route("/healthz", health.Health())
    app.add_route("/readyz", health.Readiness(lambda: [schema_problem(deps.jobs.engine)]))
    if deps.settings.metrics:
        app.add_route("/metrics", metrics.Exposition())
    app.add_sink(_unrouted_api, prefix=_UNDER_API)
    return app


def get_app(
    settings: Settings | None = None, waits: WaitRegistry | None = None
) -> falcon.App[falcon.Request, falcon.Response]:
    """The API as configured by ``settings``, else by the environment (gunicorn's factory); its
    held waits in ``waits`` (api.server stops them at shutdown).

    Raises tracker.config.ConfigError for bad settings, ValueError for an unusable secret.
    """
    settings = settings or Settings.from_env(os.environ)
    # Pre-ping for the writes and logins, which must not be retried blindly: each checkout first
    # makes sure the connection is alive, so a restarted database costs them nothing.
    engine = make_engine(settings.database_url)
    secret = auth.load_secret(settings.secret, settings.secret_file)
    jobs = open_job_store(engine)
    # PostgreSQL announces revocations on the row cache's listener; SQLite's counter of commits
    # tells when to read them again (api/revocations.py).
    revoked = RevokedTokens(TokenRevocations(engine), jobs.change_counter())
    return create_app(
        Deps(
            jobs=jobs,
            users=UserStore(engine),
            throttle=LoginThrottle(engine, LoginLimits.of(settings)),
            tokens=auth.Tokens(secret, settings.token_ttl_s),
            settings=settings,
            reads=job_reads(
                settings.database_url,
                cached_rows=settings.row_cache_rows,
                waits=waits,
                channels=[revoked],
                max_waits=settings.max_waits,
                max_waits_per_user=settings.max_waits_per_user,
            ),
            revoked=revoked,
        )
    )


def job_reads(
    database_url: str,
    cached_rows: int = rowcache.MAX_ENTRIES,
    warm_rows: int | None = None,
    waits: WaitRegistry | None = None,
    max_waits: int | None = None,
    max_waits_per_user: int | None = None,
    channels: Sequence[rowcache.ChannelHooks] = (),
) -> JobReads:
    """GET's reads: an engine of their own without pre-ping (a round trip less per GET; a read
    that meets a dropped connection is retried instead), through the exact row cache of up to
    ``cached_rows`` rows (0: none) on PostgreSQL, which starts with the ``warm_rows`` newest
    (default: as many as it holds). Opens no connection: the cache's listener starts on first
    use, in the process that serves (after gunicorn's fork); ``channels`` listen on its
    connection (none without the cache). Requests that wait are held in ``waits`` (default: a
    registry of its own, with these caps)."""
    engine = make_engine(database_url, pool_pre_ping=False)
    store = open_job_store(engine)
    waits = waits or WaitRegistry(max_waits, max_waits_per_user)
    if engine.dialect.name != "postgresql" or cached_rows <= 0:
        return JobReads(store, waits=waits)
    cache = rowcache.RowCache(
        rowcache.connector_for(engine),
        max_entries=cached_rows,
        warm_rows=warm_rows,
        on_change=waits.notify,
        channels=channels,
    )
    return JobReads(store, cache, waits)


def is_later_version(version: str) -> bool:
    """Whether ``version`` is a minor release after the newest served one of a served major (→ 501)."""
    match = _VERSION.fullmatch(version)
    if match is None:
        return False
    major, minor = (part.lstrip("0") or "0" for part in match.groups())
    # Lengths first: Python's int() refuses very long text, and a long number is a large one.
    newest = _NEWEST_MINOR.get(int(major)) if len(major) <= 9 else None
    return newest is not None and (len(minor) > 9 or int(minor) > newest)


class _ServedVersion(BaseConverter):
    """Route field matching only the served versions, so that every other one reaches the sink."""

    def convert(self, value: str) -> str | None:
        return value if value in SERVED_VERSIONS else None


def _unrouted_api(req: falcon.Request, resp: falcon.Response, **params: str) -> None:
    """Anything under /api/ no route took: a version we will serve one day (501), or nothing (404)."""
    # A sink gets the named groups of its prefix as keywords; _UNDER_API always has ``version``.
    if is_later_version(params["version"]):
        raise falcon.HTTPNotImplemented(description=NOT_IMPLEMENTED)
    raise falcon.HTTPRouteNotFound()
