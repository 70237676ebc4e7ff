"""A real ``tracker api`` with two gunicorn workers: /metrics sums both, whichever takes the scrape."""

from __future__ import annotations

import concurrent.futures
import pathlib

from tests.e2e.live_api import running_api
from tests.metrics_text import parse, total, value

JOB = "/api/{version}/async_status/{job_id}"


def test_the_http_counters_are_every_workers_together(database_url: str, tmp_path: pathlib.Path) -> None:
    with running_api(database_url, tmp_path, workers="2") as api:
        # Many clients at once, so both workers take requests (one alone would show ~half).
        requests = [("GET", f"/api/5.0/async_status/{n}") for n in range(60)]
        requests += [("GET", f"/no/such/path/{n}") for n in range(30)]
        requests += [("DELETE", "/api/5.0/async_status/1")] * 10
        requests += [("GET", "/healthz")] * 5
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda r: api.request(*r).status, requests))
        assert statuses.count(401) == 60 and statuses.count(404) == 30 and statuses.count(405) == 10
        for _ in range(6):  # whichever worker answers the scrape, the figures are the same sums
            answer = api.request("GET", "/metrics")
            assert answer.status == 200
            assert answer.headers["content-type"].startswith("text/plain")
            samples = parse(answer.body.decode())
            assert value(samples, "tracker_http_requests_total", method="GET", route=JOB, code="401") == 60
            assert value(samples, "tracker_http_requests_total", method="GET", route="unmatched", code="404") == 30
            assert value(samples, "tracker_http_requests_total", method="DELETE", route=JOB, code="405") == 10
            assert value(samples, "tracker_http_requests_total", method="GET", route="/healthz", code="200") == 5
            assert value(samples, "tracker_http_request_duration_seconds_count", route=JOB) == 70
            assert value(samples, "tracker_http_request_duration_seconds_count", route="unmatched") == 30
        # No label holds a path or a job id: every route is a template or "unmatched".
        routes = {dict(labels)["route"] for (name, labels) in samples if name == "tracker_http_requests_total"}
        assert routes == {JOB, "unmatched", "/healthz", "/metrics", "/api/{version}/ping"}  # ping: live_api waits on it
        assert total(samples, "tracker_http_requests_total", route="/metrics") >= 5
