"""Attacks only the live server meets (gunicorn parses first): each refused with a JSON alert, never HTML."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from api.errors import MAX_HEADER_FIELD_BYTES, MAX_HEADER_FIELDS, MAX_REQUEST_LINE_BYTES
from api.resources import LENGTH_REQUIRED, MAX_BODY_BYTES
from tests.e2e.live_api import Answer, LiveApi, add_users, running_api
from tracker.store import make_engine, migrate
from tracker.users import UserStore

USER_CACHE_S = 1.0
HEADERS_TOO_LARGE = (
    f"the request headers must be at most {MAX_HEADER_FIELDS} fields of at most {MAX_HEADER_FIELD_BYTES} bytes each"
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    workdir = tmp_path_factory.mktemp("live")
    url = f"sqlite:///{workdir / 'tracker.db'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    add_users(url, ops="operations")
    with running_api(url, workdir, user_cache_s=str(USER_CACHE_S)) as api:
        yield api


@pytest.fixture(scope="module")
def token(live: LiveApi) -> str:
    return live.login("ops")


def assert_alert(answer: Answer, status: int, text: str) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    # Whether gunicorn refused it or the app did (issue 24, point 8).
    assert (answer.headers["x-content-type-options"], answer.headers["cache-control"]) == ("nosniff", "no-store")
    assert answer.json == {"alerts": [{"text": text, "level": "error"}]}


def test_oversized_headers_are_refused_with_json(live: LiveApi, token: str) -> None:
    big = "a" * (MAX_HEADER_FIELD_BYTES + 1)
    for headers in (
        {"X-Padding": big},
        {"Cookie": f"access_token={big}"},
        {"Authorization": f"Bearer {big}"},
        {f"X-Field-{i}": "x" for i in range(MAX_HEADER_FIELDS + 1)},
    ):
        assert_alert(live.request("GET", "/api/5.0/ping", headers=headers), 431, HEADERS_TOO_LARGE)
    long_id = "1" * MAX_REQUEST_LINE_BYTES
    assert_alert(
        live.request("GET", f"/api/5.0/async_status/{long_id}", headers={"Authorization": f"Bearer {token}"}),
        414,
        f"the request line must be at most {MAX_REQUEST_LINE_BYTES} bytes",
    )
    # Just under the limits the app answers, and a giant credential is merely a bad one.
    assert_alert(
        live.request("GET", "/api/5.0/async_status/1", headers={"Authorization": "Bearer " + "a" * 8000}),
        401,
        "unauthorized, please log in.",
    )


def test_bytes_that_are_not_http_are_refused_with_json(live: LiveApi) -> None:
    for raw, status, text in (
        (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
        (b"GET /api/5.0/ping HTTP/9.9\r\nHost: x\r\n\r\n", 400, "malformed HTTP request"),
        (b"GET /api/5.0/ping HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n", 400, "malformed HTTP request"),
        # Both lengths at once is how requests are smuggled past proxies.
        (
            b"POST /api/5.0/user/login HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n",
            400,
            "malformed HTTP request",
        ),
        (
            b"POST /api/5.0/user/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: x-unknown\r\n\r\n",
            501,
            "unsupported transfer coding",
        ),
    ):
        assert_alert(live.send_raw(raw), status, text)


def test_bodies_are_bounded_and_need_a_length(live: LiveApi, token: str) -> None:
    auth = f"Authorization: Bearer {token}\r\n".encode()
    # A length far past the limit is refused before the body is read, so the missing bytes do not stall it.
    promised = live.send_raw(
        b"POST /api/5.0/async_status HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{}"
    )
    assert_alert(promised, 413, f"the request body must be at most {MAX_BODY_BYTES} bytes")
    # Falcon reads by Content-Length: a chunked body would pass for empty, and create a job it did not ask for.
    chunk = json.dumps({"message": "chunked"}).encode()
    chunked = live.send_raw(
        b"POST /api/5.0/async_status HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(chunk):x}\r\n".encode()
        + chunk
        + b"\r\n0\r\n\r\n"
    )
    assert_alert(chunked, 411, LENGTH_REQUIRED)


def test_raw_dot_segments_reach_no_file(live: LiveApi, token: str) -> None:
    for path in (
        "/api/5.0/async_status/../../../../etc/passwd",
        "/api/5.0/../../../etc/passwd",
        "/api/5.0/async_status/..%2f..%2f..%2fetc%2fpasswd",
        "/../../etc/passwd",
    ):
        answer = live.send_raw(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        assert answer.status == 404 and answer.headers["content-type"] == "application/json", answer
        assert [alert["level"] for alert in answer.json["alerts"]] == ["error"]  # type: ignore[index]
        assert b"root:" not in answer.body


def test_a_deleted_users_token_stops_working_in_every_worker(live: LiveApi) -> None:
    add_users(live.database_url, leaver="operations")
    bearer = {"Authorization": f"Bearer {live.login('leaver')}"}
    for _ in range(4):  # reach both workers, so that both cache the user
        assert live.request("POST", "/api/5.0/async_status", headers=bearer).status == 202
    engine = make_engine(live.database_url)
    assert UserStore(engine).remove("leaver")
    engine.dispose()
    time.sleep(USER_CACHE_S + 0.2)  # TRACKER_USER_CACHE_S; 30 s by default, within the 60 s promised
    for _ in range(10):
        assert_alert(live.request("POST", "/api/5.0/async_status", headers=bearer), 401, "unauthorized, please log in.")
