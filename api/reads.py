"""GET's reads of one job (through the exact row cache on PostgreSQL) and of its timeline, retried once after a
dropped connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from api.rowcache import RowCache
from tracker.store import Job, JobStore, StoreUnavailable, TimelineEvent

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
    from it whenever it can vouch for them.
    """

    def __init__(self, store: JobStore, cache: RowCache | None = None) -> None:
        self._store = store
        self._cache = cache

    def get_job(self, job_id: int) -> Job:
        """The job's public row; raises JobNotFound, or StoreUnavailable when the database is away."""
        if self._cache is None:
            return self._read(job_id)
        return self._cache.get(job_id, self._read)

    def timeline(self, job_id: int) -> list[TimelineEvent]:
        """The job's events in merge-key order (never cached); raises JobNotFound or StoreUnavailable."""
        return retried_after_disconnect(lambda: self._store.timeline(job_id))

    def _read(self, job_id: int) -> Job:
        return retried_after_disconnect(lambda: self._store.get_job(job_id))

    def close(self) -> None:
        """Stop the cache's listener, if there is one."""
        if self._cache is not None:
            self._cache.close()
