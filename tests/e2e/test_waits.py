"""Waiting for a job (SPEC §7): ``Prefer: wait=N`` against a real ``tracker api`` on the default
worker settings, on SQLite and PostgreSQL; and shutdown with waits held."""

from __future__ import annotations

import concurrent.futures
import http.client
import pathlib
import signal
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from tests.e2e.live_api import Answer, LiveApi, add_users, running_api
from tests.metrics_text import parse, value
from tracker import timefmt
from tracker.config import Settings
from tracker.events import new_event
from tracker.store import JobStore, make_engine

ANSWERED_AFTER_COMMIT_S = 0.05  # SPEC §7: "seen within milliseconds of its commit"; the issue: within 50 ms
PROMPT_S = 1.0  # SPEC §7: no one's answer delayed beyond a second
GRACEFUL_TIMEOUT_S = 10  # api.server: the longest a worker may take to stop


@pytest.fixture
def live(database_url: str, tmp_path: pathlib.Path) -> Iterator[LiveApi]:
    add_users(database_url, ops="operations")
    with running_api(database_url, tmp_path) as api:
        yield api


@pytest.fixture
def bearer(live: LiveApi) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.login('ops')}"}


class Waiting:
    """One GET of a job with a Prefer header, sent on a thread of its own; when its answer came."""

    def __init__(self, live: LiveApi, job_id: int, headers: dict[str, str]) -> None:
        self.answer: Answer | None = None
        self.answered_at = float("inf")
        self.sent_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(live, job_id, headers), daemon=True)
        self._thread.start()

    def _run(self, live: LiveApi, job_id: int, headers: dict[str, str]) -> None:
        connection = http.client.HTTPConnection(live.host, live.port, timeout=90)
        try:
            connection.request("GET", f"/api/5.0/async_status/{job_id}", headers=headers)
            response = connection.getresponse()
            body = response.read()
            self.answered_at = time.monotonic()
            self.answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
        finally:
            connection.close()

    def join(self, timeout: float) -> Answer:
        self._thread.join(timeout)
        assert self.answer is not None, "no answer"
        return self.answer

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()


def held(waits: list[Waiting], seconds: float = 1.0) -> None:
    """Give the waits time to reach the server, and check that none was answered meanwhile."""
    time.sleep(seconds)
    assert not [w for w in waits if w.done], "a wait was answered while its job was PENDING"


def test_a_wait_is_answered_within_50_ms_of_the_commit_that_ends_the_job(
    live: LiveApi, bearer: dict[str, str], store: JobStore
) -> None:
    gaps = []
    for n in range(7):
        job = store.create_job(f"Deploying {n}.")
        waiting = Waiting(live, job.id, {**bearer, "Prefer": "wait=30"})
        held([waiting], 0.5)
        store.apply([new_event(job.id, "succeeded" if n % 2 else "failed", "Done.")])
        committed_at = time.monotonic()  # apply returns once its transaction has committed
        answer = waiting.join(10)
        assert answer.status == 200, answer
        assert answer.json["response"]["status"] in ("SUCCEEDED", "FAILED")  # type: ignore[index]
        assert answer.headers["preference-applied"] == "wait=30"
        gaps.append(waiting.answered_at - committed_at)
    # The median: one answer late because this shared 2-core machine was busy elsewhere is noise.
    assert statistics.median(gaps) < ANSWERED_AFTER_COMMIT_S, [round(gap * 1000, 1) for gap in gaps]


def test_a_wait_that_expires_returns_the_pending_row_with_preference_applied(
    live: LiveApi, bearer: dict[str, str], store: JobStore
) -> None:
    job = store.create_job("Deploying.")
    started = time.monotonic()
    waiting = Waiting(live, job.id, {**bearer, "Prefer": "wait=2"})
    time.sleep(0.5)
    store.apply([new_event(job.id, "progress", "Copying files.")])  # a new message is not a new status
    answer = waiting.join(10)
    assert 2.0 <= waiting.answered_at - started < 2.0 + PROMPT_S
    assert answer.status == 200
    assert answer.headers["preference-applied"] == "wait=2"
    assert answer.json == {  # the row as a plain GET gives it, as it is when the time is up
        "response": {
            "id": job.id,
            "status": "PENDING",
            "start_time": timefmt.format_time(job.start_time),
            "end_time": None,
            "message": "Copying files.",
        }
    }


def test_a_connection_that_waited_serves_its_next_request(live: LiveApi, bearer: dict[str, str], store: JobStore):
    job = store.create_job()
    connection = http.client.HTTPConnection(live.host, live.port, timeout=10)
    try:
        connection.request("GET", f"/api/5.0/async_status/{job.id}", headers={**bearer, "Prefer": "wait=1"})
        first = connection.getresponse()
        assert first.status == 200 and first.getheader("Preference-Applied") == "wait=1"
        first.read()
        connection.request("GET", f"/api/5.0/async_status/{job.id}", headers=bearer)
        second = connection.getresponse()
        assert second.status == 200 and second.getheader("Preference-Applied") is None
        second.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    "prefer",
    ["wait=0", "wait=abc", "wait=-1", "wait=1.5", "wait=", "wait", "wait=3 junk", "respond-async", "wait=x, wait=5"],
)
def test_a_bad_prefer_value_is_ignored(live: LiveApi, bearer: dict[str, str], store: JobStore, prefer: str) -> None:
    job = store.create_job()
    started = time.monotonic()
    answer = live.request("GET", f"/api/5.0/async_status/{job.id}", headers={**bearer, "Prefer": prefer})
    assert time.monotonic() - started < 0.9  # not held: the shortest wait is a second
    assert answer.status == 200 and answer.json["response"]["status"] == "PENDING"  # type: ignore[index]
    assert "preference-applied" not in answer.headers


def test_finished_jobs_and_errors_are_answered_at_once(live: LiveApi, bearer: dict[str, str], store: JobStore):
    job = store.create_job()
    store.apply([new_event(job.id, "succeeded", "Deployed.")])
    for prefer, applied in (("wait=5", "wait=5"), ("wait=61", "wait=60"), ('respond-async, WAIT="7"', "wait=7")):
        started = time.monotonic()
        answer = live.request("GET", f"/api/5.0/async_status/{job.id}", headers={**bearer, "Prefer": prefer})
        assert time.monotonic() - started < 0.9
        assert answer.status == 200 and answer.json["response"]["status"] == "SUCCEEDED"  # type: ignore[index]
        assert answer.headers["preference-applied"] == applied
    for path, status in (("/api/5.0/async_status/999999", 404), ("/api/5.0/async_status/x", 400)):
        started = time.monotonic()
        answer = live.request("GET", path, headers={**bearer, "Prefer": "wait=5"})
        assert time.monotonic() - started < 0.9
        assert answer.status == status and "preference-applied" not in answer.headers
    assert live.request("GET", f"/api/5.0/async_status/{job.id}", headers={"Prefer": "wait=5"}).status == 401


def test_200_waits_are_held_while_plain_gets_are_served_promptly(
    live: LiveApi, bearer: dict[str, str], store: JobStore, database_url: str
) -> None:
    done = store.create_job()
    store.apply([new_event(done.id, "succeeded")])

    def plain_gets(count: int) -> list[float]:
        latencies = []
        for _ in range(count):
            started = time.monotonic()
            assert live.request("GET", f"/api/5.0/async_status/{done.id}", headers=bearer).status == 200
            latencies.append(time.monotonic() - started)
        return latencies

    before = plain_gets(40)
    jobs = [store.create_job() for _ in range(200)]
    waits = [Waiting(live, job.id, {**bearer, "Prefer": "wait=60"}) for job in jobs]
    held(waits, 2.0)
    during = plain_gets(40)
    if database_url.startswith("postgresql"):
        # Held waits hold no database connection: the API's stay at its pools' idle few.
        engine = make_engine(database_url)
        with engine.connect() as conn:
            connections = conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            ).scalar_one()
        engine.dispose()
        assert connections < 40, connections
    assert not [w for w in waits if w.done]
    assert max(during) < PROMPT_S, during
    # "Keep their speed": the median within noise of the median with no wait held.
    assert statistics.median(during) < 3 * statistics.median(before) + 0.01, (before, during)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda job: store.apply([new_event(job.id, "succeeded")]), jobs))
    answers = [waiting.join(10) for waiting in waits]
    assert [a.json["response"]["status"] for a in answers] == ["SUCCEEDED"] * 200  # type: ignore[index]


def test_held_waits_are_answered_at_once_when_the_api_stops(
    database_url: str, tmp_path: pathlib.Path, store: JobStore
) -> None:
    add_users(database_url, ops="operations")
    with running_api(database_url, tmp_path) as live:
        bearer = {"Authorization": f"Bearer {live.login('ops')}"}
        job = store.create_job()
        waits = [Waiting(live, job.id, {**bearer, "Prefer": "wait=60"}) for _ in range(6)]
        held(waits)
        stopping = time.monotonic()
        live.process.send_signal(signal.SIGTERM)
        answers = [waiting.join(GRACEFUL_TIMEOUT_S) for waiting in waits]
        assert all(w.answered_at - stopping < PROMPT_S for w in waits), [w.answered_at - stopping for w in waits]
        assert {a.status for a in answers} == {200}
        assert {a.json["response"]["status"] for a in answers} == {"PENDING"}  # type: ignore[index]
        assert live.process.wait(GRACEFUL_TIMEOUT_S + 5) == 0
        assert time.monotonic() - stopping < GRACEFUL_TIMEOUT_S


# Held waits have a cap (issue 24): per API worker, and per user within a worker. Twice the
# workers' caps together, sent at once, must leave plain GETs prompt. The default settings'.
DEFAULTS = Settings()
CAP = DEFAULTS.workers * DEFAULTS.max_waits  # 2 workers of 192: 384
# Users enough that each one's share of a worker's waits stays within its own cap (144), even
# if one worker takes most of them: the workers' caps are what bind.
WAITERS = 4


def wait_request(job_id: int, token: str) -> bytes:
    return (
        f"GET /api/5.0/async_status/{job_id} HTTP/1.1\r\nHost: tracker\r\nAuthorization: Bearer {token}\r\n"
        "Prefer: wait=60\r\n\r\n"
    ).encode()


class PlainGets:
    """GETs of a finished job back to back, on new connections, from a thread, until stopped; their latencies."""

    def __init__(self, live: LiveApi, job_id: int, headers: dict[str, str]) -> None:
        self.latencies: list[float] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(live, job_id, headers), daemon=True)
        self._thread.start()

    def _run(self, live: LiveApi, job_id: int, headers: dict[str, str]) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                assert live.request("GET", f"/api/5.0/async_status/{job_id}", headers=headers).status == 200
            except (OSError, AssertionError) as exc:
                self.failures.append(exc)
            self.latencies.append(time.monotonic() - started)
            self._stop.wait(0.05)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(15)
        assert not self.failures, self.failures
        return self.latencies


def waits_held(live: LiveApi) -> float:
    return value(parse(live.request("GET", "/metrics").body.decode()), "tracker_waits_held")


@pytest.fixture
def waiters(live: LiveApi, database_url: str) -> list[str]:
    """The tokens of WAITERS users with ASYNC-STATUS:READ."""
    names = [f"waiter{n}" for n in range(WAITERS)]
    add_users(database_url, **dict.fromkeys(names, "operations"))
    return [live.login(name) for name in names]


def settled(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def worst_ms(latencies: list[float]) -> str:
    return f"{max(latencies) * 1000:.0f} ms worst of {len(latencies)}"


def test_twice_the_cap_of_held_waits_leaves_plain_gets_prompt(
    live: LiveApi, bearer: dict[str, str], waiters: list[str], store: JobStore
) -> None:
    done = store.create_job()
    store.apply([new_event(done.id, "succeeded")])
    before = PlainGets(live, done.id, bearer)
    time.sleep(2.0)
    before_s = before.stop()
    jobs = [store.create_job() for _ in range(2 * CAP // 8)]  # eight waits per job
    arriving = PlainGets(live, done.id, bearer)
    waits = [
        Waiting(live, jobs[n % len(jobs)].id, {"Authorization": f"Bearer {waiters[n % WAITERS]}", "Prefer": "wait=60"})
        for n in range(2 * CAP)
    ]
    # Each wait is held, or answered at once; then the held ones stay held while plain GETs go on.
    try:
        took_s = settled(lambda: sum(w.done for w in waits) + waits_held(live) == len(waits), 30, "the waits")
    finally:
        arriving_s = arriving.stop()  # first, should plain GETs have failed meanwhile
    plain = PlainGets(live, done.id, bearer)
    time.sleep(3.0)
    during_s = plain.stop()
    answered = [w.join(0) for w in waits if w.done]
    held_now = waits_held(live)
    print(  # the figures of docs/waiting.md
        f"waits: {len(waits)} sent, {held_now:.0f} held (cap {CAP}), {len(answered)} answered at once, "
        f"settled in {took_s:.1f} s; plain GETs {worst_ms(before_s)} before, {worst_ms(arriving_s)} while "
        f"the waits arrived (this process starting {len(waits)} threads meanwhile), {worst_ms(during_s)} while held"
    )
    # Held, they take no thread that plain GETs need. (Before the cap: time-outs at 10 s.)
    assert max(during_s) < PROMPT_S, (worst_ms(before_s), sorted(during_s)[-5:])
    # Those beyond the cap were answered at once: the row, without Preference-Applied (RFC 7240).
    assert len(answered) >= len(waits) - CAP and held_now == len(waits) - len(answered), (held_now, len(answered))
    assert {(a.status, a.json["response"]["status"], "preference-applied" in a.headers) for a in answered} == {  # type: ignore[index]
        (200, "PENDING", False)
    }
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda job: store.apply([new_event(job.id, "succeeded")]), jobs))
    finished = [w.join(10) for w in waits if w.answer is None or "preference-applied" in w.answer.headers]
    assert len(finished) == held_now
    assert {(a.json["response"]["status"], a.headers["preference-applied"]) for a in finished} == {  # type: ignore[index]
        ("SUCCEEDED", "wait=60")
    }
    assert waits_held(live) == 0


def test_waits_whose_clients_reset_or_close_their_connections_free_their_threads(
    live: LiveApi, bearer: dict[str, str], waiters: list[str], store: JobStore
) -> None:
    done = store.create_job()
    store.apply([new_event(done.id, "succeeded")])
    job = store.create_job()
    sockets = []
    for n in range(2 * CAP):
        sock = socket.create_connection((live.host, live.port), timeout=10)
        sock.sendall(wait_request(job.id, waiters[n % WAITERS]))
        sockets.append(sock)
    time.sleep(2.0)  # held, as many as may be
    held_before = waits_held(live)
    assert held_before > 0
    for n, sock in enumerate(sockets):  # all gone within a second: half with an RST, half with a FIN
        if n % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    reset_at = time.monotonic()
    plain = PlainGets(live, done.id, bearer)
    # Every held wait ends when its client goes: their threads are free again.
    freed_s = settled(lambda: waits_held(live) == 0, 10, "the reset waits to end")
    time.sleep(max(0.0, reset_at + 3.0 - time.monotonic()))
    during_s = plain.stop()
    print(
        f"waits: {len(sockets)} sent, {held_before:.0f} held, reset: all ended within {freed_s:.2f} s; "
        f"plain GETs meanwhile {worst_ms(during_s)}"
    )
    assert max(during_s) < PROMPT_S, sorted(during_s)[-5:]
    assert freed_s < PROMPT_S
    # And new waits are held again (none was counted twice, none left behind).
    again = [Waiting(live, job.id, {**bearer, "Prefer": "wait=60"}) for _ in range(4)]
    held(again)
    store.apply([new_event(job.id, "succeeded")])
    assert {w.join(10).headers["preference-applied"] for w in again} == {"wait=60"}
