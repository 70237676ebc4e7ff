"""Logging out ends the token in every API process (issue 24, point 3): a live ``tracker api`` with
several gunicorn workers, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import pathlib
import time

from api.revocations import TRUST_WINDOW_S
from tests.e2e.live_api import Answer, add_users, exchange, running_api

WORKERS = 3


def _refused_after(connection, path: str, headers: dict[str, str], within_s: float) -> float:
    """Seconds until a GET of ``path`` with ``headers`` is answered 401 on ``connection``; fails after ``within_s``."""
    started = time.monotonic()
    while True:
        answer: Answer = exchange(connection, "GET", path, headers)
        if answer.status == 401:
            assert answer.json == {"alerts": [{"text": "unauthorized, please log in.", "level": "error"}]}
            return time.monotonic() - started
        assert answer.status == 200, answer
        assert time.monotonic() - started < within_s, f"still answered 200 after {within_s} s"
        time.sleep(0.01)


def test_a_logout_ends_the_token_in_every_worker(database_url: str, tmp_path: pathlib.Path) -> None:
    add_users(database_url, ops="operations")
    with running_api(database_url, tmp_path, workers=str(WORKERS)) as live:
        token = live.login("ops")
        bearer = {"Authorization": f"Bearer {token}"}
        created = live.request("POST", "/api/5.0/async_status", b"{}", {**bearer, "Content-Type": "application/json"})
        assert created.status == 202, created
        path = created.headers["location"]

        def warm(connection) -> None:  # the worker knows the token: verified, remembered
            assert exchange(connection, "GET", path, bearer).status == 200

        workers = live.connection_to_each_worker(warm, WORKERS)
        assert len(workers) == WORKERS
        for connection in workers.values():
            warm(connection)  # again: gunicorn closes a connection idle for 2 s, and finding them all may take that
        logout = live.request(
            "POST", "/api/5.0/user/logout", b"", {"Cookie": f"access_token={token}", "Content-Type": "application/json"}
        )
        assert logout.status == 200, logout
        # The bound: at once where the database is asked at each request (SQLite; PostgreSQL while a
        # worker's listener is not live), else when PostgreSQL's notification arrives, and never
        # later than the listener's trust window.
        within_s = 0.0 if database_url.startswith("sqlite") else TRUST_WINDOW_S
        took = {}
        for pid, connection in workers.items():
            for headers in (bearer, {"Cookie": f"access_token={token}"}, {"Cookie": f"mojolicious={token}"}):
                took[(pid, next(iter(headers.values()))[:12])] = _refused_after(connection, path, headers, within_s)
        print(f"refused by every worker after {json.dumps(sorted(round(s * 1000, 1) for s in took.values()))} ms")
