"""GET's reads of one job (through the exact row cache on PostgreSQL, held while the job is PENDING when
the request asks to wait) and of its timeline, retried once after a dropped connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from api.rowcache import RowCache
from api.waits import StatusPoller, WaitRegistry
from tracker.model import Job, TimelineEvent
from tracker.store import JobStore, StoreUnavailable

_T = TypeVar("_T")


def retried_after_disconnect(read: Callable[[], _T]) -> _T:
    """``read()``, run once more if it failed because its pooled connection had been dropped.

    For engines without pre-ping: a restart of PostgreSQL leaves every pooled connection dead,
    the first use of one fails and invalidates the pool, and the second attempt connects anew.
    Only for reads (a write may have committed before its connection dropped). Raises what
    ``read`` raises the second time, or the first time for any other failure.
    """
    try:
        return read()
    except StoreUnavailable as exc:
        cause = exc.__cause__
        if not (isinstance(cause, sa.exc.DBAPIError) and cause.connection_invalidated):
            raise
    return read()


class JobReads:
    """The job rows GET /api/{version}/async_status/{id} answers with.

    ``store`` should be on an engine without pre-ping (a round trip saved per read); a read that
    meets a dropped connection is retried once. With a ``cache`` (PostgreSQL only), rows come
    from it whenever it can vouch for them. Waits are woken through ``waits``: by the cache's
    listener while it listens (it must have been made with ``on_change=waits.notify``), else by
    a StatusPoller of this process.
    """

    def __init__(self, store: JobStore, cache: RowCache | None = None, waits: WaitRegistry | None = None) -> None:
        self._store = store
        self._cache = cache
        self._waits = waits or WaitRegistry()
        live = (lambda: cache.listening) if cache is not None else (lambda: False)
        self._poller = StatusPoller(
            self._waits, lambda ids: store.statuses(ids), live, change_counter=lambda: store.change_counter()
        )

    @property
    def waits(self) -> WaitRegistry:
        return self._waits

    def get_job(self, job_id: int) -> Job:
        """The job's public row; raises JobNotFound, or StoreUnavailable when the database is away."""
        if self._cache is None:
            return self._read(job_id)
        return self._cache.get(job_id, self._read)

    def wait_for(
        self, job_id: int, seconds: float, user: str, gone: Callable[[], bool] | None = None
    ) -> tuple[Job, bool]:
        """The job's row once it is no longer PENDING, or after ``seconds``, or at once on shutdown
        or when ``gone()`` says the client has gone; and True. Or, when the registry's caps hold
        no more of ``user``'s requests, the row at once, as ``get_job`` gives it; and False.

        Holds no database connection while it waits. Raises as ``get_job`` does.
        """
        with self._waits.admitted(user) as held:
            if not held:
                return self.get_job(job_id), False
            self._poller.start()
            return self._waits.hold(job_id, seconds, self.get_job, gone), True

    def listen(self) -> None:
        """Start the cache's listener in this process, if there is a cache and it has not started
        (a GET starts it too): streams are woken by it."""
        if self._cache is not None:
            self._cache.listen()

    @property
    def notified(self) -> bool:
        """Whether the cache's listener hears of every change now (waits and streams are woken by it)."""
        return self._cache is not None and self._cache.listening

    @property
    def store(self) -> JobStore:
        return self._store

    def timeline(self, job_id: int) -> list[TimelineEvent]:
        """The job's events in merge-key order (never cached); raises JobNotFound or StoreUnavailable."""
        return retried_after_disconnect(lambda: self._store.timeline(job_id))

    def _read(self, job_id: int) -> Job:
        return retried_after_disconnect(lambda: self._store.get_job(job_id))

    def close(self) -> None:
        """Stop the cache's listener, if there is one, and the waits' poller."""
        self._waits.stop()
        self._poller.close()
        if self._cache is not None:
            self._cache.close()
