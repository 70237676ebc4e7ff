"""SPEC §13's streams through a real ``tracker api``, on SQLite and PostgreSQL: each change of a
matching row, in commit order, as GET renders it; resumed from Last-Event-ID with nothing missed;
a reset for a cursor that cannot be resumed; one job's stream ending after its final state."""

from __future__ import annotations

import http.client
import json
import pathlib
import statistics
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.e2e.live_api import LiveApi, add_users, running_api
from tracker.events import new_event
from tracker.store import JobStore, make_engine
from tracker.store.tables import async_status

SEEN_AFTER_COMMIT_S = 0.05  # SPEC §13: "within milliseconds of the commit"


@pytest.fixture
def live(database_url: str, tmp_path: pathlib.Path) -> Iterator[LiveApi]:
    add_users(database_url, ops="operations", reader="read-only")
    with running_api(database_url, tmp_path) as api:
        yield api


@pytest.fixture
def bearer(live: LiveApi) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.login('ops')}"}


class Stream:
    """One stream read frame by frame: a dict of its fields (``event``, ``id``, ``data``), or
    ``{"comment": …}``."""

    def __init__(self, live: LiveApi, path: str, headers: dict[str, str], timeout: float = 10) -> None:
        self._connection = http.client.HTTPConnection(live.host, live.port, timeout=timeout)
        self._connection.request("GET", path, headers={**headers, "Accept": "text/event-stream"})
        self.response = self._connection.getresponse()

    def frame(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the stream ended")
            text = line.decode().rstrip("\n")
            if not text:
                if fields:
                    return fields
                continue
            name, _, value = text.partition(":")
            if not name:
                return {"comment": value.strip()}
            fields[name] = value.removeprefix(" ")

    def job(self) -> tuple[int, dict[str, object]]:
        """The next ``event: job`` frame's cursor and row (skipping anything else)."""
        while True:
            frame = self.frame()
            if frame.get("event") == "job":
                return int(frame["id"]), json.loads(frame["data"])

    def close(self) -> None:
        self._connection.close()


def _get_row(live: LiveApi, job_id: int, headers: dict[str, str]) -> object:
    answer = live.request("GET", f"/api/5.0/async_status/{job_id}", headers=headers)
    assert answer.status == 200
    return answer.json["response"]  # type: ignore[index]


def test_the_list_streams_each_change_as_get_renders_it_within_milliseconds(
    live: LiveApi, bearer: dict[str, str], store: JobStore
) -> None:
    stream = Stream(live, "/api/5.0/async_status", bearer)
    try:
        assert stream.response.status == 200
        assert stream.response.getheader("Content-Type") == "text/event-stream"
        assert stream.response.getheader("Cache-Control") == "no-store"
        start = int(stream.frame()["id"])  # the position, before any change
        job = store.create_job("Deploying.", kind="deploy", labels=(("env", "prod"),))
        cursor, row = stream.job()
        assert cursor > start
        assert row == _get_row(live, job.id, bearer)
        gaps = []
        for n in range(5):
            store.apply([new_event(job.id, "progress", f"step {n}", seq=n, progress=n * 10)])
            committed_at = time.monotonic()
            later, row = stream.job()
            gaps.append(time.monotonic() - committed_at)
            assert later > cursor
            cursor = later
            assert row["message"] == f"step {n}"
        store.apply([new_event(job.id, "succeeded", "Done.", seq=9, result={"ok": True})])
        cursor, row = stream.job()
        assert row == _get_row(live, job.id, bearer)
        assert row["status"] == "SUCCEEDED"
        assert statistics.median(gaps) < SEEN_AFTER_COMMIT_S, [round(gap * 1000, 1) for gap in gaps]
    finally:
        stream.close()


def test_a_stream_resumed_from_its_last_event_id_misses_nothing(
    live: LiveApi, bearer: dict[str, str], store: JobStore
) -> None:
    first, second, third = (store.create_job(f"job {n}") for n in range(3))
    stream = Stream(live, "/api/5.0/async_status", bearer)
    store.apply([new_event(first.id, "progress", "one")])
    cursor, _ = stream.job()
    stream.close()
    # while it is away: the second job changes twice, the third ends, the first not again
    store.apply([new_event(second.id, "progress", "a", seq=1)])
    store.apply([new_event(third.id, "failed", "broke")])
    store.apply([new_event(second.id, "progress", "b", seq=2)])
    again = Stream(live, "/api/5.0/async_status", {**bearer, "Last-Event-ID": str(cursor)})
    try:
        rows = [again.job()[1] for _ in range(2)]
        assert rows == [_get_row(live, third.id, bearer), _get_row(live, second.id, bearer)]  # each once, as now
        assert rows[1]["message"] == "b"
    finally:
        again.close()


def test_the_list_filters_apply_to_the_stream(live: LiveApi, bearer: dict[str, str], store: JobStore) -> None:
    stream = Stream(live, "/api/5.0/async_status?status=SUCCEEDED&kind=deploy&label=env%3Dprod&limit=1", bearer)
    try:
        running, other = store.create_job("a", kind="deploy"), store.create_job("c", kind="backup")
        ending = store.create_job("b", kind="deploy", labels=(("env", "prod"),))
        store.apply([new_event(running.id, "progress", "busy")])
        store.apply([new_event(other.id, "succeeded", "done")])
        store.apply([new_event(ending.id, "succeeded", "done")])
        _, row = stream.job()
        assert (row["id"], row["status"]) == (ending.id, "SUCCEEDED")
    finally:
        stream.close()
    bad = live.request("GET", "/api/5.0/async_status?status=NOPE", headers={**bearer, "Accept": "text/event-stream"})
    assert bad.status == 400


def test_a_cursor_from_before_a_deletion_or_unknown_gets_a_reset(
    live: LiveApi, bearer: dict[str, str], store: JobStore, database_url: str
) -> None:
    job = store.create_job("x")
    cursor = int(Stream(live, "/api/5.0/async_status", bearer).frame()["id"])
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.delete(async_status).where(async_status.c.id == job.id))
    engine.dispose()
    for last in (str(cursor), "not a cursor"):
        stream = Stream(live, "/api/5.0/async_status", {**bearer, "Last-Event-ID": last})
        try:
            frame = stream.frame()
            assert frame["event"] == "reset"
            # going on from the cursor the reset gave
            later = store.create_job("y")
            _, row = stream.job()
            assert row["id"] == later.id
        finally:
            stream.close()


def test_one_jobs_stream_gives_its_row_then_its_changes_and_ends_after_its_final_state(
    live: LiveApi, bearer: dict[str, str], store: JobStore
) -> None:
    job = store.create_job("Deploying.")
    stream = Stream(live, f"/api/5.0/async_status/{job.id}", bearer)
    try:
        _, row = stream.job()
        assert row == _get_row(live, job.id, bearer)
        store.apply([new_event(store.create_job("other").id, "succeeded")])  # another job: not streamed
        store.apply([new_event(job.id, "progress", "half", progress=50)])
        _, row = stream.job()
        assert (row["message"], row["progress"]) == ("half", 50)
        store.apply([new_event(job.id, "succeeded", "Done.")])
        _, row = stream.job()
        assert row == _get_row(live, job.id, bearer)
        with pytest.raises(EOFError):
            stream.frame()
    finally:
        stream.close()
    # a finished job: its row, then the end
    finished = Stream(live, f"/api/5.0/async_status/{job.id}", bearer)
    try:
        assert finished.job()[1]["status"] == "SUCCEEDED"
        with pytest.raises(EOFError):
            finished.frame()
    finally:
        finished.close()


def test_streams_answer_errors_as_the_list_and_get_do(live: LiveApi, bearer: dict[str, str]) -> None:
    sse = {"Accept": "text/event-stream"}
    assert live.request("GET", "/api/5.0/async_status", headers=sse).status == 401
    reader = {"Authorization": f"Bearer {live.login('reader')}", **sse}
    assert live.request("GET", "/api/5.0/async_status", headers=reader).status == 403
    assert live.request("GET", "/api/5.0/async_status/999999", headers={**bearer, **sse}).status == 404
    assert live.request("GET", "/api/5.0/async_status/x", headers={**bearer, **sse}).status == 400
    # a wildcard is no request for a stream
    plain = live.request("GET", "/api/5.0/async_status", headers={**bearer, "Accept": "*/*"})
    assert plain.headers["content-type"] == "application/json"


def test_an_idle_stream_gets_a_comment_every_15_s(live: LiveApi, bearer: dict[str, str]) -> None:
    stream = Stream(live, "/api/5.0/async_status", bearer, timeout=20)
    try:
        stream.frame()  # the position
        opened = time.monotonic()
        assert stream.frame() == {"comment": "keep-alive"}
        assert 14 <= time.monotonic() - opened < 17
    finally:
        stream.close()


def test_a_stream_ends_when_its_session_is_logged_out(live: LiveApi, store: JobStore) -> None:
    token = live.login("ops")
    stream = Stream(live, "/api/5.0/async_status", {"Authorization": f"Bearer {token}"})
    try:
        stream.frame()  # the position
        logout = live.request(
            "POST",
            "/api/5.0/user/logout",
            b"",
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert logout.status == 200
        with pytest.raises(EOFError):
            while True:
                stream.frame()  # a comment at most, then the end, within a second or two
    finally:
        stream.close()
