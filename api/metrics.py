"""The API's metrics: a middleware counting and timing each request by route template, and ``/metrics``.

Under ``tracker api`` the workers write their figures to files in a directory of prometheus_client's
multiprocess mode (``api.server`` makes it), and ``/metrics`` answers with all of them together,
whichever worker takes the scrape. Anywhere else (tests, another server) it answers with this
process's own.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from api.waits import Cap
from tracker import metrics

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"  # the route of any request no route took (404s, versions not served)
# Any other method a client makes up is one label value, not one each.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_CONVERTER = re.compile(r"\{(\w+):[^}]*\}")


class RequestMetrics:
    """Falcon middleware: ``tracker_http_requests_total`` and ``tracker_http_request_duration_seconds``.

    ``route`` is the template the request matched, with its converters left out
    (``/api/{version}/async_status/{job_id}``), or ``unmatched``: never the path itself. Children of
    the metrics are resolved once per label set and kept (a few dozen at most).
    """

    def __init__(self) -> None:
        self._routes: dict[str | None, str] = {None: UNMATCHED}
        self._counts: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[str, Any] = {}

    def process_request(self, req: falcon.Request, _resp: falcon.Response) -> None:
        req.context.metrics_started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, _resource: object, _req_succeeded: bool
    ) -> None:
        seconds = time.perf_counter() - req.context.metrics_started
        template = req.uri_template
        route = self._routes.get(template)
        if route is None:
            route = self._routes.setdefault(template, _CONVERTER.sub(r"{\1}", template or UNMATCHED))
        key = (req.method if req.method in METHODS else "other", route, resp.status_code)
        count = self._counts.get(key)
        if count is None:
            count = self._counts.setdefault(key, metrics.HTTP_REQUESTS.labels(*key))
        count.inc()
        duration = self._durations.get(route)
        if duration is None:
            duration = self._durations.setdefault(route, metrics.HTTP_DURATION.labels(route))
        duration.observe(seconds)


class WaitMetrics:
    """``tracker_waits_held`` and ``tracker_waits_refused_total``, as a WaitRegistry reports them
    (``api.waits.WaitCounts``); summed over the workers like the rest."""

    def __init__(self) -> None:
        self._refused = {cap: metrics.WAITS_REFUSED.labels(cap) for cap in metrics.WAIT_CAPS}

    def held(self, change: int) -> None:
        metrics.WAITS_HELD.inc(change)

    def refused(self, cap: Cap) -> None:
        self._refused[cap].inc()


class StreamMetrics:
    """``tracker_streams_open`` and ``tracker_streams_refused_total``, as the streams' registry
    reports them (``api.waits.WaitCounts``; streams have one cap, the worker's)."""

    def held(self, change: int) -> None:
        metrics.STREAMS_OPEN.inc(change)

    def refused(self, cap: Cap) -> None:
        metrics.STREAMS_REFUSED.inc()


class Exposition:
    """``GET /metrics``: the Prometheus text format, every worker's figures together."""

    def __init__(self) -> None:
        self._directory = os.environ.get(MULTIPROCESS_DIR)

    def on_get(self, _req: falcon.Request, resp: falcon.Response) -> None:
        registry = REGISTRY
        if self._directory:
            # What the workers have written so far, read afresh at each scrape (their files are small).
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._directory)  # type: ignore[no-untyped-call]
        resp.data = generate_latest(registry)
        resp.content_type = CONTENT_TYPE_LATEST
