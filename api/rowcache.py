"""An exact in-process cache of job rows, dropped by PostgreSQL's NOTIFY when a row changes.

Why it never serves a wrong row (the notifications, the counter, the listener's proof, the safety
net) is argued in docs/rowcache.md; keep that argument and this code in step.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import sqlalchemy as sa

from tracker import timefmt
from tracker.model import Job

log = logging.getLogger(__name__)

CHANNEL = "tracker_async_status"  # the channel migration 0002's triggers notify

MAX_ENTRIES = 100_000
# The safety net's bound: the oldest read of a row ever served. Notifications keep rows exact;
# this only bounds a change no notification told of (a writer the triggers did not see). A short
# bound costs GET throughput in re-reads of the rows in use and misses of the rows that lapsed
# (bench #3 at 5 s and 30 s: docs/performance.md).
TTL_S = 30.0
IDLE_S = 60.0
CHECK_S = 1.0
_MIN_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0
_IDS_PER_READ = 10_000
# Libpq options of the listener's connection: notice a dead peer within about half a minute even
# when no packet says so (the periodic checks stop the cache from being used well before that).
_CONNECT_OPTIONS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}

Connect = Callable[[], psycopg.Connection[Any]]

# The triggers of migration 0002, and the check (one round trip every CHECK_S) that they are all
# there and fire: without them the cache would never hear of a change.
_TRIGGERS = ["tracker_async_status_updated", "tracker_async_status_deleted", "tracker_async_status_truncated"]
_CHECK_TRIGGERS = (
    "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('async_status') "
    "AND tgname = ANY(%s) AND tgenabled IN ('O', 'A')"
)
# The public columns, as tracker.store reads them for GET.
_ROWS_BY_ID = "SELECT id, status, start_time, end_time, message FROM async_status WHERE id = ANY(%s::bigint[])"
_NEWEST_ROWS = "SELECT id, status, start_time, end_time, message FROM async_status ORDER BY id DESC LIMIT %s"


class NotNotified(RuntimeError):
    """The database would not tell the listener about changes (no triggers): the cache stays off."""


def connector_for(engine: sa.Engine) -> Connect:
    """A function opening a new autocommit psycopg connection to the database behind ``engine``.

    Raises ValueError when ``engine`` is not PostgreSQL through psycopg 3.
    """
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        raise ValueError("the row cache needs PostgreSQL through psycopg 3")
    _args, params = engine.dialect.create_connect_args(engine.url)
    options = {**_CONNECT_OPTIONS, **params, "autocommit": True}

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(**options)

    return connect


class _Entry:
    __slots__ = ("expires_at", "job", "used_at")

    def __init__(self, expires_at: float, job: Job, used_at: float) -> None:
        self.expires_at = expires_at
        self.job = job
        self.used_at = used_at  # when a request last asked for it (-inf: never)


class RowCache:
    """Job rows by id, at most ``max_entries`` (least recently used leave first). Thread-safe.

    The listener thread starts on first use in each process (so under gunicorn it starts in the
    worker, after the fork); until it is listening every read goes to the database. ``warm_rows``
    newest rows are read when it starts listening (0: none). ``on_change`` is called on the
    listener thread with the ids of every notification (None: any row may have changed, as when
    it starts listening), after those rows have left the cache: waits hear of changes this way.
    """

    def __init__(
        self,
        connect: Connect,
        *,
        max_entries: int = MAX_ENTRIES,
        ttl_s: float = TTL_S,
        idle_s: float = IDLE_S,
        check_s: float = CHECK_S,
        warm_rows: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[set[int] | None], None] | None = None,
    ) -> None:
        self._connect = connect
        self._on_change = on_change
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._idle_s = idle_s
        self._check_s = check_s
        self._warm_rows = max_entries if warm_rows is None else min(warm_rows, max_entries)
        # The listener must have proved itself within this long for the cache to be used.
        self._trusted_for_s = 2 * check_s + 1.0
        # Used rows are read again when they would expire before the listener's next turn or two.
        self._refresh_ahead_s = min(2 * check_s + 0.5, ttl_s / 2)
        self._clock = clock
        self._pid: int | None = None
        self._set_up_process()

    def _set_up_process(self) -> None:
        """Fresh state for this process: nothing inherited across a fork is trusted."""
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        # (expires_at, id) in the order rows were read, hence of expiry; stale pairs are skipped.
        self._expiries: collections.deque[tuple[float, int]] = collections.deque()
        self._invalidations = 0
        self._listening = False
        self._proved_at = float("-inf")
        self._backend_pid: int | None = None
        self._missed = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # --- the read path (request threads) ---

    def get(self, job_id: int, load: Callable[[int], Job]) -> Job:
        """The job's row: from the cache when it is there and trusted, else ``load(job_id)``.

        Raises what ``load`` raises (JobNotFound, StoreUnavailable); such outcomes are not kept.
        """
        self._start_listener()
        now = self._clock()
        with self._lock:
            trusted = self._listening and now - self._proved_at <= self._trusted_for_s
            if trusted:
                entry = self._entries.get(job_id)
                if entry is not None:
                    if entry.expires_at > now:
                        entry.used_at = now
                        self._entries.move_to_end(job_id)
                        return entry.job
                    del self._entries[job_id]
            seen = self._invalidations
        job = load(job_id)
        if trusted:
            with self._lock:
                # Kept only if no invalidation at all came in since before the read: one for this
                # row may have been meant for a change the read did not see.
                if self._listening and self._invalidations == seen:
                    self._remember(job, now, used_at=now)
        return job

    def _remember(self, job: Job, read_at: float, used_at: float) -> None:
        """Keep ``job`` as read at ``read_at``; the caller holds the lock."""
        entry = _Entry(read_at + self._ttl_s, job, used_at)
        self._entries[job.id] = entry
        self._entries.move_to_end(job.id)
        self._expiries.append((entry.expires_at, job.id))
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    # --- what tests and operators may look at ---

    @property
    def listening(self) -> bool:
        """Whether the listener is connected and listening (in this process)."""
        return self._pid == os.getpid() and self._listening

    @property
    def invalidations(self) -> int:
        """How many invalidations have been applied (notifications, connection losses, resets)."""
        return self._invalidations

    @property
    def missed_notifications(self) -> int:
        """Rows found changed when read again although no notification had said so (should be 0)."""
        return self._missed

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend pid of the listener's connection, while it has one."""
        return self._backend_pid

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def close(self, timeout: float = 10.0) -> None:
        """Stop the listener (it notices within ``check_s``) and forget every row."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._go_dark()

    # --- the listener (its own thread) ---

    def _start_listener(self) -> None:
        if self._pid != os.getpid():
            self._set_up_process()
        if self._thread is not None or self._stopping.is_set():
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen_forever, name="tracker-rowcache", daemon=True)
                self._thread.start()

    def _listen_forever(self) -> None:
        """Runs on the listener thread until close(): listen, and reconnect with capped back-off."""
        backoff = _MIN_BACKOFF_S
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._backend_pid = conn.info.backend_pid
                    self._listen(conn, on_live=lambda: log.info("row cache: listening on %s", CHANNEL))
                    backoff = _MIN_BACKOFF_S
            except Exception as exc:  # noqa: BLE001 - any failure: stop trusting, reconnect
                if not self._stopping.is_set():
                    # The type and first line only: never the connection string, which may hold a password.
                    first_line = (str(exc).strip().splitlines() or [""])[0]
                    log.warning(
                        "row cache: not listening (%s: %s); reading from the database, trying again in %.1f s",
                        type(exc).__name__,
                        first_line,
                        backoff,
                    )
            finally:
                self._go_dark()
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _listen(self, conn: psycopg.Connection[Any], on_live: Callable[[], None]) -> None:
        """Apply notifications as they come; every ``check_s`` prove the connection and the
        triggers, and read again the rows in use that are about to expire.

        Returns when close() is called; raises whatever the connection raises, and NotNotified.
        """
        live = False
        while not self._stopping.is_set():
            sent_at = self._clock()
            self._apply_pending(conn)
            if live:
                with self._lock:
                    self._proved_at = sent_at
                self._read_again(conn, self._due())
            else:
                self._go_live(sent_at)
                live = True
                on_live()
                if self._warm_rows:
                    self._keep_read_rows(conn, _NEWEST_ROWS, (self._warm_rows,), refresh=False)
            for notify in conn.notifies(timeout=self._check_s):
                self._invalidate(notify.payload)

    def _apply_pending(self, conn: psycopg.Connection[Any]) -> set[int] | None:
        """Check the triggers, then apply every notification PostgreSQL sent before answering:
        all of those of changes committed before the check was sent. The ids they named; None
        for every row. Raises NotNotified without the triggers."""
        enabled = conn.execute(_CHECK_TRIGGERS, (_TRIGGERS,)).fetchone()
        if enabled is None or enabled[0] != len(_TRIGGERS):
            raise NotNotified(
                "the async_status triggers of migration 0002 are missing or disabled (run `tracker migrate`)"
            )
        named: set[int] | None = set()
        for notify in conn.notifies(timeout=0):  # psycopg kept those that came with the answer
            ids = self._invalidate(notify.payload)
            named = None if ids is None or named is None else named | ids
        return named

    def _due(self) -> list[int]:
        """Rows asked for within ``idle_s`` that would expire before the listener's next turn or
        two. Drops the expired others."""
        due: list[int] = []
        now = self._clock()
        horizon = now + self._refresh_ahead_s
        looked, pending = 0, len(self._expiries)
        while looked < pending:
            # A thousand at a time, so that requests need not wait for the lock while a whole
            # warm-up's worth of rows comes due.
            with self._lock:
                for _ in range(min(1000, pending - looked)):
                    looked += 1
                    if not self._expiries or self._expiries[0][0] > horizon:
                        return due
                    expires_at, job_id = self._expiries.popleft()
                    entry = self._entries.get(job_id)
                    if entry is None or entry.expires_at != expires_at:
                        continue  # gone, or read again since
                    if now - entry.used_at <= self._idle_s:
                        due.append(job_id)
                    elif expires_at <= now:
                        del self._entries[job_id]
                    else:
                        self._expiries.append((expires_at, job_id))  # may yet be asked for: look again later
        return due

    def _read_again(self, conn: psycopg.Connection[Any], ids: list[int]) -> None:
        for start in range(0, len(ids), _IDS_PER_READ):
            self._keep_read_rows(conn, _ROWS_BY_ID, (ids[start : start + _IDS_PER_READ],), refresh=True)

    def _keep_read_rows(
        self, conn: psycopg.Connection[Any], query: str, params: tuple[object, ...], refresh: bool
    ) -> None:
        """Read rows on the listener's connection and keep those no notification has named since.

        ``refresh``: only rows still cached are replaced (the others have left on purpose);
        otherwise only rows not cached are added.
        """
        read_at = self._clock()
        rows = conn.execute(query, params).fetchall()
        changed = self._apply_pending(conn)  # everything committed since the read has been applied
        if changed is None:
            return
        with self._lock:
            if not self._listening:
                return
            for job in _jobs_of(rows):
                if job.id in changed:
                    continue
                entry = self._entries.get(job.id)
                if refresh:
                    if entry is None:
                        continue
                    if entry.job != job:
                        self._missed += 1
                        log.warning("row cache: job %d had changed without a notification; corrected", job.id)
                    self._entries[job.id] = entry = _Entry(read_at + self._ttl_s, job, entry.used_at)
                    self._expiries.append((entry.expires_at, job.id))
                elif entry is None and len(self._entries) < self._max_entries:
                    self._remember(job, read_at, used_at=float("-inf"))

    def _invalidate(self, payload: str) -> set[int] | None:
        """Drop the rows a notification names; the ids, or None when it meant every row."""
        ids: set[int] | None
        try:
            ids = {int(part) for part in payload.split(",")}
        except ValueError:
            ids = None  # "*", or anything unexpected: drop every row
        with self._lock:
            if ids is None:
                self._forget_all()
            else:
                self._invalidations += 1
                for job_id in ids:
                    self._entries.pop(job_id, None)
        if self._on_change is not None:
            self._on_change(ids)
        return ids

    def _go_live(self, proved_at: float) -> None:
        """LISTEN has succeeded: anything remembered before may have missed a notification."""
        with self._lock:
            self._forget_all()
            self._proved_at = proved_at
            self._listening = True
        if self._on_change is not None:
            self._on_change(None)  # whatever changed while nobody listened

    def _go_dark(self) -> None:
        """Not listening any more: from now on notifications may be missed, so trust nothing."""
        with self._lock:
            self._listening = False
            self._backend_pid = None
            self._forget_all()

    def _forget_all(self) -> None:
        """Drop every row, and count it as an invalidation (so reads in flight are not kept);
        the caller holds the lock."""
        self._entries.clear()
        self._expiries.clear()
        self._invalidations += 1


def _jobs_of(rows: Iterable[tuple[Any, ...]]) -> Iterable[Job]:
    """Rows of (id, status, start_time, end_time, message) as tracker.store returns them: in UTC."""
    for job_id, status, start_time, end_time, message in rows:
        yield Job(
            job_id,
            status,
            start_time.astimezone(timefmt.UTC),
            None if end_time is None else end_time.astimezone(timefmt.UTC),
            message,
        )
