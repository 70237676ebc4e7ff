"""Waits without I/O: the Prefer header as RFC 7240 reads it, the registry that holds and wakes
requests, the poller's policy, and the read deadline of the API's client sockets."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import struct
import threading
import time
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.server import DeadlineSocket
from api.waits import StatusPoller, WaitRegistry, client_gone, client_gone_check, preferred_wait
from tracker.errors import JobNotFound, RequestTimedOut, StoreUnavailable
from tracker.model import Job

# SPEC §7: "Prefer: wait=N (N 1 to 60)".
MIN_WAIT_S, MAX_WAIT_S = 1, 60
START = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=5", 5),
        ("WAIT=5", 5),
        ("wait = 5", 5),
        ('wait="7"', 7),
        ("wait=05", 5),
        ("respond-async, wait=10", 10),
        ("handling=lenient; x=1, wait=3;foo", 3),
        ('foo="a,wait=3", wait=4', 4),
        (", ,wait=2", 2),
        ("wait=5, wait=9", 5),  # RFC 7240 §2: only the first instance counts
        ("wait=60", 60),
        ("wait=61", 60),  # more than we hold: held for the most we hold
        ("wait=" + "9" * 5000, 60),  # no int() of a huge number
    ],
)
def test_a_wait_preference_is_read(header: str, seconds: int) -> None:
    assert preferred_wait(header) == seconds


@pytest.mark.parametrize(
    "header",
    [None, "", "wait=0", "wait=-1", "wait=abc", "wait=", "wait", "wait=1.5", "wait=٣", "wait=3 junk", "respond-async",
     "wait=x, wait=5", 'wait="5'],
)  # fmt: skip
def test_a_bad_or_absent_wait_preference_is_ignored(header: str | None) -> None:
    assert preferred_wait(header) is None


@given(st.integers(min_value=MIN_WAIT_S, max_value=MAX_WAIT_S))
def test_every_wait_in_the_spec_range_is_honoured_as_given(seconds: int) -> None:
    assert preferred_wait(f"wait={seconds}") == seconds
    assert preferred_wait(f'respond-async, wait="{seconds}"; x=y') == seconds


@given(st.text(max_size=200))
def test_any_header_text_is_read_or_ignored_never_raises(text: str) -> None:
    seconds = preferred_wait(text)
    assert seconds is None or MIN_WAIT_S <= seconds <= MAX_WAIT_S


def job(job_id: int, status: str = "PENDING", message: str | None = None) -> Job:
    return Job(job_id, status, START, None if status == "PENDING" else START, message)


class Rows:
    """A fake table: reads count, and ``change`` may also tell the registry."""

    def __init__(self, registry: WaitRegistry) -> None:
        self.rows = {1: job(1), 2: job(2)}
        self.reads = 0
        self._registry = registry

    def read(self, job_id: int) -> Job:
        self.reads += 1
        if job_id not in self.rows:
            raise JobNotFound(job_id)
        return self.rows[job_id]

    def change(self, row: Job, notify: bool = True) -> None:
        self.rows[row.id] = row
        if notify:
            self._registry.notify({row.id})

    def statuses(self, ids: Sequence[int]) -> dict[int, str]:
        return {job_id: self.rows[job_id].status for job_id in ids if job_id in self.rows}


def hold_in_thread(registry: WaitRegistry, rows: Rows, job_id: int, seconds: float) -> dict[str, object]:
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["job"] = registry.hold(job_id, seconds, rows.read)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc
        result["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result["thread"] = thread
    deadline = time.monotonic() + 5
    while job_id not in registry.waited_ids() and time.monotonic() < deadline:
        time.sleep(0.001)
    return result


def finish(result: dict[str, object]) -> None:
    thread = result["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(5)
    assert not thread.is_alive()


def test_a_finished_job_is_answered_without_waiting() -> None:
    registry = WaitRegistry()
    rows = Rows(registry)
    rows.change(job(1, "SUCCEEDED"), notify=False)
    assert registry.hold(1, 30, rows.read) == job(1, "SUCCEEDED")
    assert rows.reads == 1 and registry.waited_ids() == []


def test_a_held_request_is_woken_by_its_jobs_change_and_not_by_others() -> None:
    registry = WaitRegistry()
    rows = Rows(registry)
    result = hold_in_thread(registry, rows, 1, 30)
    rows.change(job(2, "FAILED"))  # another job
    rows.change(job(1, "PENDING", "Copying files."))  # a new message, not a new status
    time.sleep(0.05)
    assert "at" not in result
    changed_at = time.monotonic()
    rows.change(job(1, "SUCCEEDED", "Done."))
    finish(result)
    assert result["job"] == job(1, "SUCCEEDED", "Done.")
    assert float(result["at"]) - changed_at < 0.5  # type: ignore[arg-type]
    assert registry.waited_ids() == []


def test_a_wait_that_expires_gives_the_row_as_it_is_then() -> None:
    registry = WaitRegistry()
    rows = Rows(registry)
    started = time.monotonic()
    result = hold_in_thread(registry, rows, 1, 0.3)
    rows.change(job(1, "PENDING", "Copying files."), notify=False)  # nobody told: still the answer's row
    finish(result)
    assert result["job"] == job(1, "PENDING", "Copying files.")
    assert 0.3 <= float(result["at"]) - started < 1.0  # type: ignore[arg-type]


def test_a_change_committed_during_the_first_read_is_not_missed() -> None:
    registry = WaitRegistry()
    rows = Rows(registry)

    def read_then_commit(job_id: int) -> Job:
        row = rows.read(job_id)
        if rows.reads == 1:  # the change lands after the read, its notification before the wait
            rows.change(job(1, "SUCCEEDED"))
        return row

    started = time.monotonic()
    assert registry.hold(1, 30, read_then_commit).status == "SUCCEEDED"
    assert time.monotonic() - started < 1


def test_a_job_deleted_while_waited_for_is_not_found() -> None:
    registry = WaitRegistry()
    rows = Rows(registry)
    result = hold_in_thread(registry, rows, 1, 30)
    del rows.rows[1]
    registry.notify(None)  # as TRUNCATE's notification does
    finish(result)
    assert isinstance(result["error"], JobNotFound)


def test_stopping_answers_held_requests_at_once_and_holds_no_more() -> None:
    registry = WaitRegistry()
    rows = Rows(registry)
    results = [hold_in_thread(registry, rows, job_id, 30) for job_id in (1, 2, 1)]
    stopped_at = time.monotonic()
    registry.stop()
    for result in results:
        finish(result)
        assert float(result["at"]) - stopped_at < 0.5  # type: ignore[arg-type]
        assert isinstance(result["job"], Job) and result["job"].status == "PENDING"
    started = time.monotonic()
    assert registry.hold(1, 30, rows.read).status == "PENDING"
    assert time.monotonic() - started < 0.5


def test_the_poller_wakes_waits_whose_job_is_no_longer_pending_while_notifications_are_off() -> None:
    registry = WaitRegistry()
    rows = Rows(registry)
    live = threading.Event()
    polled: list[list[int]] = []

    def statuses(ids: Sequence[int]) -> dict[int, str]:
        polled.append(sorted(ids))
        return rows.statuses(ids)

    poller = StatusPoller(registry, statuses, live.is_set, interval_s=0.01)
    poller.start()
    try:
        time.sleep(0.1)
        assert polled == []  # no one waits: no reads
        result = hold_in_thread(registry, rows, 1, 30)
        rows.change(job(1, "PENDING", "Copying files."), notify=False)
        time.sleep(0.1)
        assert "at" not in result and polled and set(polled[-1]) == {1}
        changed_at = time.monotonic()
        rows.change(job(1, "SUCCEEDED"), notify=False)
        finish(result)
        assert float(result["at"]) - changed_at < 0.5  # type: ignore[arg-type]
        live.set()  # the listener hears changes now: the poller stops reading
        other = hold_in_thread(registry, rows, 2, 0.3)
        time.sleep(0.05)
        count = len(polled)
        finish(other)
        assert len(polled) == count
    finally:
        poller.close()


def test_with_a_change_counter_the_poller_reads_statuses_only_after_a_commit() -> None:
    registry = WaitRegistry()
    rows = Rows(registry)
    commits = [0]
    polled: list[int] = []

    def statuses(ids: Sequence[int]) -> dict[int, str]:
        polled.append(len(ids))
        return rows.statuses(ids)

    poller = StatusPoller(registry, statuses, interval_s=0.01, change_counter=lambda: lambda: commits[0])
    poller.start()
    try:
        result = hold_in_thread(registry, rows, 1, 30)
        time.sleep(0.2)
        assert len(polled) <= 1  # at most the first look, whatever the number of ticks
        before = len(polled)
        rows.change(job(1, "PENDING", "Copying files."), notify=False)
        commits[0] += 1
        time.sleep(0.1)
        assert len(polled) == before + 1 and "at" not in result
        rows.change(job(1, "SUCCEEDED"), notify=False)
        commits[0] += 1
        finish(result)
        assert result["job"] == job(1, "SUCCEEDED")
    finally:
        poller.close()


def test_the_poller_backs_off_while_the_database_is_away_then_keeps_its_pace_again() -> None:
    registry = WaitRegistry()
    rows = Rows(registry)
    away = threading.Event()
    away.set()
    tries: list[float] = []

    def statuses(ids: Sequence[int]) -> dict[int, str]:
        tries.append(time.monotonic())
        if away.is_set():
            raise StoreUnavailable("the database is away")
        return rows.statuses(ids)

    poller = StatusPoller(registry, statuses, interval_s=0.01)
    poller.start()
    try:
        result = hold_in_thread(registry, rows, 1, 30)
        time.sleep(0.6)
        # 10 ms doubling (tracker.backoff): a handful of tries, not one every 10 ms.
        assert 3 <= len(tries) <= 10
        assert tries[-1] - tries[-2] >= 0.08
        away.clear()
        time.sleep(0.6)  # the next try finds the database again ...
        back = len(tries)
        time.sleep(0.2)
        assert len(tries) - back >= 5  # ... and the pace is the interval's again, not the last back-off's
        rows.change(job(1, "SUCCEEDED"), notify=False)
        finish(result)
        assert result["job"] == job(1, "SUCCEEDED")
    finally:
        poller.close()


def test_a_client_socket_read_fails_once_its_deadline_has_passed() -> None:
    ours, theirs = socket.socketpair()
    sock = DeadlineSocket.taking_over(ours)
    try:
        theirs.sendall(b"GET / HT")
        sock.start_reading(0.3)
        started = time.monotonic()
        assert sock.recv(100) == b"GET / HT"
        with pytest.raises(RequestTimedOut, match=r"^the request was not received within 0.3 seconds$"):
            sock.recv(100)
        assert 0.25 <= time.monotonic() - started < 1.0
        assert sock.timed_out
        sock.stop_reading()  # after reading, as gunicorn's own code sets it
        assert sock.gettimeout() is None
        theirs.sendall(b"TP/1.1")
        assert sock.recv(100) == b"TP/1.1"
    finally:
        sock.close()
        theirs.close()


class Counts:
    """What a registry reports (api.waits.WaitCounts), kept."""

    def __init__(self) -> None:
        self.now = 0
        self.refusals: list[str] = []

    def held(self, change: int) -> None:
        self.now += change

    def refused(self, cap: str) -> None:
        self.refusals.append(cap)


def test_the_caps_hold_so_many_requests_in_all_and_so_many_of_one_user() -> None:
    registry = WaitRegistry(most=3, most_per_user=2)
    counts = Counts()
    registry.count_in(counts)
    with contextlib.ExitStack() as stack:
        assert [stack.enter_context(registry.admitted("ann")) for _ in range(3)] == [True, True, False]
        assert counts.refusals == ["user"]
        assert stack.enter_context(registry.admitted("bob")) is True
        assert (registry.held, counts.now) == (3, 3)
        with registry.admitted("cy") as held:
            assert held is False  # the process's cap, though cy holds none
        assert counts.refusals == ["user", "process"]
    assert (registry.held, counts.now) == (0, 0)
    with registry.admitted("ann") as held:
        assert held is True  # every slot was given back


def test_a_slot_is_given_back_when_its_request_fails() -> None:
    registry = WaitRegistry(most=1)
    with pytest.raises(JobNotFound), registry.admitted("ann"):
        raise JobNotFound(9)
    assert registry.held == 0
    with registry.admitted("ann") as held:
        assert held


def test_no_cap_holds_every_request_and_a_cap_of_zero_none() -> None:
    with contextlib.ExitStack() as stack:
        assert all(stack.enter_context(WaitRegistry().admitted("ann")) for _ in range(1000))
    with WaitRegistry(most=0).admitted("ann") as held:
        assert held is False


def test_a_held_request_ends_soon_after_its_client_goes_and_asks_only_every_check() -> None:
    registry = WaitRegistry()
    rows = Rows(registry)
    asked: list[float] = []
    gone_at = time.monotonic() + 0.5

    def gone() -> bool:
        asked.append(time.monotonic())
        return asked[-1] >= gone_at

    started = time.monotonic()
    assert registry.hold(1, 30, rows.read, gone, check_s=0.1) == job(1)
    took = time.monotonic() - started
    assert 0.5 <= took < 0.5 + 0.1 + 0.3
    assert rows.reads == 1  # the answer goes nowhere: the row is not read again
    assert 4 <= len(asked) <= 7  # every 0.1 s, not in a busy loop
    # Still woken by its job's change at once, not at the next check.
    result = hold_in_thread(registry, rows, 2, 30)
    changed_at = time.monotonic()
    rows.change(job(2, "SUCCEEDED"))
    finish(result)
    assert float(result["at"]) - changed_at < 0.05  # type: ignore[arg-type]


def test_client_gone_sees_a_close_and_a_reset_but_not_bytes_sent_which_it_leaves_unread() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for end in ("idle", "sends", "closes", "resets"):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            server.setblocking(True)
            with server:
                if end == "sends":
                    client.sendall(b"GET /next HTTP/1.1\r\n")
                elif end == "resets":
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                if end in ("closes", "resets"):
                    client.close()
                time.sleep(0.05)
                started = time.monotonic()
                assert client_gone(server) is (end in ("closes", "resets")), end
                assert time.monotonic() - started < 0.05  # never waits
                if end == "sends":
                    assert server.recv(100) == b"GET /next HTTP/1.1\r\n"  # still there to be read
            client.close()


def test_a_request_of_a_server_that_names_no_socket_has_no_client_check() -> None:
    assert client_gone_check({}) is None
    with socket.socket() as sock:
        check = client_gone_check({"gunicorn.socket": sock})
        assert check is not None and check() is True  # never connected: nobody to answer
