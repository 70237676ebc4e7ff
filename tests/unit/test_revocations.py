"""The tokens logouts ended, as each API process keeps them (api/revocations.py), without a database:
read when nothing vouches for the set, trusted while the listener does, and riding on the row
cache's listener (a fake connection, as tests/unit/test_rowcache.py's)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from api.revocations import RevokedTokens
from api.rowcache import RowCache
from tests.unit.test_rowcache import FakeConnection, wait_until
from tracker.auth import Claims
from tracker.users import REVOCATION_CHANNEL, Revocation

NOW = 2_000_000_000


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Store:
    """A fake TokenRevocations: revocations in commit order, counting reads."""

    def __init__(self) -> None:
        self.rows: list[Revocation] = []
        self.reads: list[int] = []  # the seq each read started after

    def revoke(self, token_id: str, expires_at: int) -> None:
        self.rows.append(Revocation(len(self.rows) + 1, token_id, expires_at))

    def since(self, seq: int) -> list[Revocation]:
        self.reads.append(seq)
        return [row for row in self.rows if row.seq > seq]


def claims(token_id: str, expires_at: int = NOW + 3600) -> Claims:
    return Claims("ops", NOW, expires_at, token_id, "account")


def revoked(store: Store | None, **options: Any) -> tuple[RevokedTokens, Clock, Clock]:
    clock, wall = Clock(100.0), Clock(NOW)
    return RevokedTokens(store, clock=clock, wall_clock=wall, window_s=3.0, **options), clock, wall


def test_a_logout_is_known_at_once_here_and_at_the_next_request_elsewhere() -> None:
    store = Store()
    here, _, _ = revoked(store)
    there, _, _ = revoked(store)
    assert not there.is_revoked("t1")
    here.revoke(claims("t1"))
    assert store.rows == [Revocation(1, "t1", NOW + 3600)]
    assert here.is_revoked("t1") and there.is_revoked("t1")
    assert not there.is_revoked("t2")
    # Without a listener nor a counter, each request asks for what is new since the newest it saw.
    assert store.reads == [0, 0, 0, 1]


def test_with_a_change_counter_the_database_is_read_only_after_a_commit() -> None:
    store, commits = Store(), [0]
    there, _, _ = revoked(store, change_counter=lambda: commits[0])
    for _ in range(3):
        assert not there.is_revoked("t1")
    assert store.reads == [0]
    store.revoke("t1", NOW + 60)  # another process, whose commit moves the counter
    assert not there.is_revoked("t1")  # the counter has not moved yet: the set stands
    commits[0] += 1
    assert there.is_revoked("t1")
    assert there.is_revoked("t1")
    assert store.reads == [0, 0]


def test_while_the_listener_vouches_no_request_asks_the_database() -> None:
    store = Store()
    store.revoke("before", NOW + 60)
    there, clock, _ = revoked(store)
    there.went_live(proved_at=clock.now)
    assert store.reads == [0]  # everything recorded before it listened
    assert there.trusted and there.is_revoked("before")
    there.notified(f"t1 {NOW + 60}")
    for _ in range(3):
        assert there.is_revoked("t1") and not there.is_revoked("t2")
    assert store.reads == [0]
    clock.now += 2.9
    there.proved(at=clock.now)
    clock.now += 2.9
    assert there.trusted and not there.is_revoked("t2") and store.reads == [0]
    # Silent for longer than its window: no longer trusted, the database is read again.
    clock.now += 0.2
    store.revoke("t2", NOW + 60)
    assert not there.trusted and there.is_revoked("t2")
    assert store.reads == [0, 1]  # from the newest read (a notification's seq is not known)


def test_a_listener_gone_dark_is_not_trusted() -> None:
    store = Store()
    there, clock, _ = revoked(store)
    there.went_live(proved_at=clock.now)
    there.went_dark()
    store.revoke("t1", NOW + 60)
    assert there.is_revoked("t1")


def test_a_notification_not_of_ours_makes_it_read_what_is_new() -> None:
    store = Store()
    there, clock, _ = revoked(store)
    there.went_live(proved_at=clock.now)
    store.revoke("t1", NOW + 60)
    there.notified("something else")
    assert store.reads == [0, 0]
    assert there.is_revoked("t1") and there.trusted


def test_expired_revocations_are_forgotten() -> None:
    here, _, wall = revoked(None)  # this process only
    here.revoke(claims("soon", expires_at=NOW + 10))
    here.revoke(claims("later", expires_at=NOW + 7200))
    assert len(here) == 2
    wall.now += 3600  # past the first one's expiry, and a purge is due
    here.revoke(claims("new", expires_at=NOW + 7200))
    assert (here.is_revoked("soon"), here.is_revoked("later"), here.is_revoked("new")) == (False, True, True)
    assert len(here) == 2


def test_a_database_that_is_away_is_an_error_not_a_pass() -> None:
    class Away(Store):
        def since(self, seq: int) -> list[Revocation]:
            raise RuntimeError("the database is away")

    there, _, _ = revoked(Away())
    with pytest.raises(RuntimeError):
        there.is_revoked("t1")


def test_revocations_ride_on_the_row_caches_listener() -> None:
    """One connection LISTENs on both channels; each notification goes to whoever listens on its
    channel; the set goes live, is proved and goes dark with the listener."""
    connection = FakeConnection()
    store = Store()
    store.revoke("before", NOW + 60)
    there = RevokedTokens(store)
    changed: list[set[int] | None] = []
    cache = RowCache(lambda: connection, check_s=0.05, channels=[there], on_change=changed.append)  # type: ignore[arg-type,return-value]
    try:
        assert not there.trusted
        assert not there.is_revoked("never")  # any authenticated request starts the listener, not only a GET's read
        wait_until(lambda: there.trusted, "the revocations trusted")
        assert f"LISTEN {REVOCATION_CHANNEL}" in connection.queries
        assert there.is_revoked("before")
        read = len(store.reads)  # by that first request, and once listening
        changed.clear()
        connection.notifications.put((REVOCATION_CHANNEL, "1234 99999999999"))
        wait_until(lambda: there.is_revoked("1234"), "the announced revocation")
        connection.notifications.put("5")  # a row's: the cache's, not the revocations'
        wait_until(lambda: changed == [{5}], "the row's notification")
        assert not there.is_revoked("5") and len(store.reads) == read  # none while it vouches
    finally:
        cache.close()
    assert not there.trusted


def test_requests_that_come_together_share_a_read_begun_after_they_arrived() -> None:
    """A read begun before a request arrived may have missed a logout that request must see; one
    begun after cannot. So requests waiting together for the database share the next read."""
    started, release = threading.Event(), threading.Event()

    class Slow(Store):
        def since(self, seq: int) -> list[Revocation]:
            if not self.reads:
                started.set()
                release.wait(5)
            return super().since(seq)

    store = Slow()
    there, _, _ = revoked(store)
    first = threading.Thread(target=there.is_revoked, args=("t",))
    first.start()
    assert started.wait(5)  # the first read is under way
    store.revoke("late", NOW + 60)  # committed after it began
    answers: list[bool] = []
    waiting = [threading.Thread(target=lambda: answers.append(there.is_revoked("late"))) for _ in range(5)]
    for thread in waiting:
        thread.start()
    time.sleep(0.2)  # all five wait for the read in hand
    release.set()
    for thread in (first, *waiting):
        thread.join(5)
    assert answers == [True] * 5  # none took the first read's answer for its own
    assert len(store.reads) == 2  # the five shared one
