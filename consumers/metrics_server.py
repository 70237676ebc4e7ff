"""A consumer's ``/metrics``, ``/healthz`` and ``/readyz`` at ``TRACKER_METRICS_BIND``, from a thread of their own.

``/healthz`` answers 200 while the process serves; ``/readyz`` 200 when the database answers with
the newest schema and takes the consumer's batches, and the consumer holds a subscription on the
broker, else 503 with an alert saying which is not so (the detail goes to the log:
``tracker.readiness``). No authentication, as for the API's own: nothing here names a job, a
host or a version.
"""

from __future__ import annotations

import logging
import socketserver
import threading
import wsgiref.simple_server
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from consumers.telemetry import GaugeRefresher
from tracker.config import Settings
from tracker.envelope import alerts, route_not_found
from tracker.readiness import NotReady, ReadinessLog
from tracker.store import make_engine, schema_problem

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

_JSON = [("Content-Type", "application/json")]


class Subscription(Protocol):
    """Whether the consumer holds its subscription on the broker now, and why its batches cannot be
    committed, if they cannot (``consumers.amqp.Consumer``)."""

    @property
    def subscribed(self) -> bool: ...

    @property
    def database_problem(self) -> NotReady | None: ...


class Endpoints:
    """The WSGI app of the three routes, and the server and gauge refresher behind it.

    ``ready()`` gives None when the consumer is ready, else why not. ``metrics`` False: /metrics
    is not served (404), as with ``TRACKER_METRICS=false``.
    """

    def __init__(self, ready: Callable[[], str | None], metrics: bool = True) -> None:
        self._ready = ready
        self._metrics_app: Callable[..., Iterable[bytes]] | None = None
        if metrics:
            from prometheus_client import make_wsgi_app

            self._metrics_app = make_wsgi_app()
        self._server: wsgiref.simple_server.WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._stoppers: list[Callable[[], None]] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics" and self._metrics_app is not None:
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            problem = self._ready()
            if problem is None:
                return _json(start_response, "200 OK", {"status": "ok"})
            return _json(start_response, "503 Service Unavailable", alerts(problem))
        return _json(start_response, "404 Not Found", alerts(route_not_found(path)))

    def serve(self, bind: str) -> tuple[str, int]:
        """Listen on ``bind`` (``HOST:PORT``; port 0: any free one) from a daemon thread; the address taken.

        Raises OSError when the address cannot be had.
        """
        host, _, port = bind.rpartition(":")
        server = wsgiref.simple_server.make_server(
            host.strip("[]"), int(port), self, server_class=_Server, handler_class=_QuietHandler
        )
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="tracker-endpoints", daemon=True)
        self._thread.start()
        return str(server.server_address[0]), int(server.server_address[1])

    def on_stop(self, stopper: Callable[[], None]) -> None:
        """Call ``stopper`` when the endpoints stop (what was started for them)."""
        self._stoppers.append(stopper)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for stopper in reversed(self._stoppers):
            stopper()


def start(settings: Settings, consumer: Subscription) -> Endpoints | None:
    """The endpoints of a ``tracker consume`` at ``settings.metrics_bind``, and (metrics on) the gauges' timer.

    None when ``TRACKER_METRICS_BIND`` is empty, or cannot be had (logged as an error: the consumer
    goes on without them, as it is more use consuming than not).
    """
    if not settings.metrics_bind:
        return None
    # An engine of their own, with pre-ping, so a probe never meets a connection the database dropped.
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=1)

    readiness = ReadinessLog(log)

    def ready() -> str | None:
        # The writers' problem too: a database that answers a probe may still refuse the folds (a
        # column or a grant missing), or the writers' connections may not have moved yet.
        database = schema_problem(engine) or consumer.database_problem
        subscribed = None if consumer.subscribed else NotReady("broker", "the consumer holds no subscription")
        return readiness.alert([database, subscribed])

    endpoints = Endpoints(ready, metrics=settings.metrics)
    endpoints.on_stop(engine.dispose)
    try:
        host, port = endpoints.serve(settings.metrics_bind)
    except OSError as exc:
        log.error("cannot serve /metrics, /healthz and /readyz on %s: %s", settings.metrics_bind, exc)
        engine.dispose()
        return None
    log.info("serving /metrics, /healthz and /readyz on http://%s:%d", host, port)
    if settings.metrics:
        gauges = GaugeRefresher(settings, engine)
        gauges.start()
        endpoints.on_stop(gauges.stop)
    return endpoints


def _json(start_response: StartResponse, status: str, body: Any) -> list[bytes]:
    data = orjson.dumps(body)
    start_response(status, [*_JSON, ("Content-Length", str(len(data)))])
    return [data]


class _Server(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True  # a slow scraper never holds the process up at exit


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds are not worth a log line each."""
