"""The tokens logouts ended, in the database (tracker.users.TokenRevocations) on SQLite and PostgreSQL,
and heard of through the row cache's listener on PostgreSQL (api/revocations.py)."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import sqlalchemy as sa

from api.revocations import RevokedTokens
from api.rowcache import RowCache, connector_for
from tests.polling import poll_until
from tracker import timefmt
from tracker.store import make_engine
from tracker.store.tables import revoked_tokens
from tracker.users import Revocation, TokenRevocations


def test_revocations_are_read_in_order_once_each_until_they_expire(engine: sa.Engine) -> None:
    store = TokenRevocations(engine)
    now = timefmt.now()
    soon = int(now.timestamp()) + 5
    later = int(now.timestamp()) + 3600
    store.revoke("a", soon, now=now)
    store.revoke("b", later, now=now)
    store.revoke("a", soon, now=now)  # a second logout of the same token: harmless
    assert store.since(0, now=now) == [Revocation(1, "a", soon), Revocation(2, "b", later)]
    assert store.since(1, now=now) == [Revocation(2, "b", later)]
    assert store.since(2, now=now) == []
    past_a = now + dt.timedelta(seconds=10)
    assert store.since(0, now=past_a) == [Revocation(2, "b", later)]  # an expired one is not read
    store.revoke("c", later, now=past_a)  # and the next revocation deletes it
    with engine.connect() as conn:
        assert conn.execute(sa.select(revoked_tokens.c.token_id).order_by("seq")).scalars().all() == ["b", "c"]
    assert [row.seq for row in store.since(0, now=past_a)] == [2, 4]  # numbers are never reused


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_on_postgresql_a_revocation_waits_for_the_one_before_it_to_commit(engine: sa.Engine) -> None:
    """seq must follow the order revocations commit in, or a process reading "what is new since the
    newest I saw" could pass over one drawn earlier and committed later."""
    store = TokenRevocations(engine)
    expires = int(time.time()) + 3600
    done = threading.Event()
    with engine.connect() as first:
        first.begin()
        first.exec_driver_sql("LOCK TABLE tracker_revoked_token IN SHARE ROW EXCLUSIVE MODE")
        first.execute(
            sa.insert(revoked_tokens).values(token_id="first", expires_at=dt.datetime.fromtimestamp(expires, dt.UTC))
        )
        second = threading.Thread(target=lambda: (store.revoke("second", expires), done.set()))
        second.start()
        assert not done.wait(0.5), "a revocation went ahead of one drawn before it and not yet committed"
        first.commit()
    second.join(10)
    assert done.is_set()
    with engine.connect() as conn:
        order = conn.execute(sa.select(revoked_tokens.c.token_id).order_by("seq")).scalars().all()
    assert order == ["first", "second"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_on_postgresql_another_process_hears_of_a_revocation_without_asking(database_url: str) -> None:
    """Another API process, its listener live, learns of a logout from PostgreSQL's notification:
    no request of its own reads the database for it."""
    engine = make_engine(database_url)
    reads: list[int] = []

    class Counting(TokenRevocations):
        def since(self, seq: int, now: dt.datetime | None = None) -> list[Revocation]:
            reads.append(seq)
            return super().since(seq, now)

    there = RevokedTokens(Counting(engine))
    cache = RowCache(connector_for(engine), check_s=0.1, warm_rows=0, channels=[there])
    try:
        assert not there.is_revoked("never")  # the first request starts the listener
        poll_until(lambda: there.trusted, 10, "the listener vouches for the revocations")
        read = len(reads)  # by that first request, and everything once listening
        expires = int(time.time()) + 3600
        TokenRevocations(engine).revoke("ended", expires)  # the logout, in another process
        poll_until(lambda: there.is_revoked("ended"), 2, "the revocation heard of")
        assert not there.is_revoked("another") and len(reads) == read  # none while it vouches
        # Its listener gone, it asks the database again, at each request.
        cache.close()
        assert not there.trusted
        TokenRevocations(engine).revoke("later", expires)
        assert there.is_revoked("later") and len(reads) == read + 1
    finally:
        cache.close()
        engine.dispose()
