"""Users are remembered for a while after they were looked up, absent ones too, and the cache is bounded."""

from __future__ import annotations

import datetime as dt

import pytest

from api.middleware import UserCache
from tracker.errors import StoreUnavailable
from tracker.users import User

OPS = User("ops", "operations", dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "a" * 32)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Users:
    """A fake user table counting lookups; a lookup may take time on the clock, or fail."""

    def __init__(self, clock: Clock) -> None:
        self.rows = {"ops": OPS}
        self.lookups: list[str] = []
        self.clock = clock
        self.takes_s = 0.0
        self.failing = False

    def __call__(self, username: str) -> User | None:
        self.lookups.append(username)
        self.clock.now += self.takes_s
        if self.failing:
            raise StoreUnavailable("the database is away")
        return self.rows.get(username)


def test_a_user_and_an_absent_one_are_looked_up_once_per_ttl() -> None:
    clock = Clock()
    users = Users(clock)
    cache = UserCache(users, ttl_s=30, clock=clock)
    for _ in range(3):
        assert cache.get("ops") == OPS
        assert cache.get("ghost") is None
    assert users.lookups == ["ops", "ghost"]
    del users.rows["ops"]  # deleted: still remembered until the TTL has passed
    clock.now += 29.9
    assert cache.get("ops") == OPS
    clock.now += 0.1
    assert cache.get("ops") is None
    assert users.lookups == ["ops", "ghost", "ops"]


def test_the_ttl_counts_from_when_the_lookup_began() -> None:
    clock = Clock()
    users = Users(clock)
    users.takes_s = 10
    cache = UserCache(users, ttl_s=30, clock=clock)
    cache.get("ops")  # began at 1000, answered at 1010
    clock.now = 1029.9
    cache.get("ops")
    assert len(users.lookups) == 1
    clock.now = 1030
    cache.get("ops")
    assert len(users.lookups) == 2


def test_a_failed_lookup_is_not_remembered() -> None:
    clock = Clock()
    users = Users(clock)
    users.failing = True
    cache = UserCache(users, ttl_s=30, clock=clock)
    with pytest.raises(StoreUnavailable):
        cache.get("ops")
    users.failing = False
    assert cache.get("ops") == OPS
    assert users.lookups == ["ops", "ops"]


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(UserCache, "_MAX_ENTRIES", 3)
    clock = Clock()
    users = Users(clock)
    cache = UserCache(users, ttl_s=30, clock=clock)
    for n in range(5):
        cache.get(f"user{n}")
    assert len(cache._entries) == 3  # noqa: SLF001
    cache.get("user4")  # the latest are kept
    assert len(users.lookups) == 5


def test_a_user_is_looked_up_again_only_if_the_kept_lookup_began_too_early() -> None:
    """A token newer than what the cache knows of its user may be a new account's (issue 24, point 4)."""
    clock, wall = Clock(), Clock()
    wall.now = 2_000_000_000.0
    users = Users(clock)
    cache = UserCache(users, ttl_s=30, clock=clock, wall_clock=wall)
    assert cache.get("ops") == OPS  # looked up at wall time 2_000_000_000
    assert cache.looked_up_since("ops", 2_000_000_000.0) == OPS
    assert users.lookups == ["ops"]
    renewed = User("ops", "operations", dt.datetime(2024, 1, 2, tzinfo=dt.UTC), "b" * 32)
    users.rows["ops"] = renewed
    wall.now += 0.5
    assert cache.looked_up_since("ops", 2_000_000_000.1) == renewed  # kept from before then: asked again
    assert cache.get("ops") == renewed  # and kept
    assert cache.looked_up_since("ops", 2_000_000_000.5) == renewed
    assert users.lookups == ["ops", "ops"]
