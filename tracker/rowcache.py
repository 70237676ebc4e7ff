"""An exact in-process cache of job rows, dropped by PostgreSQL's NOTIFY when a row changes.

Migration 0002 makes PostgreSQL notify ``CHANNEL`` with the ids of the rows each UPDATE or
DELETE changed (``*`` for TRUNCATE), whoever the writer. A listener thread with a connection of
its own drops those rows from the cache. What keeps the cache exact:

- Only rows that exist are kept: a miss (JobNotFound) is never remembered, so inserts need no
  notification.
- Every invalidation bumps a counter. A load remembers its row only if the counter has not
  moved since before it read the database; otherwise a change may have landed between its read
  and now, and its row is handed out once but not kept.
- The cache is used only while the listener is listening and has proved so recently (a query
  every ``check_s`` that also checks the triggers are there and enabled; PostgreSQL sends a
  listener its pending notifications before it answers, so every change committed before the
  check was sent has been applied by then). Otherwise every read goes to the database, and the cache is emptied on the way out
  and again once LISTEN has succeeded on a new connection.
- Every entry also expires ``ttl_s`` after it was loaded, a safety net and nothing more.

A GET that arrives after a commit but before its notification (well under a millisecond on one
host) may still get the row as it was just before that commit, as a GET a moment earlier would.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa

from tracker.store import Job

log = logging.getLogger(__name__)

CHANNEL = "tracker_async_status"  # the channel migration 0002's triggers notify
EVERY_ROW = "*"  # the payload that means "every row may have changed" (TRUNCATE)

MAX_ENTRIES = 100_000
TTL_S = 5.0
CHECK_S = 1.0
_MIN_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0
# Libpq options of the listener's connection: notice a dead peer within about half a minute even
# when no packet says so (the periodic checks stop the cache from being used well before that).
_CONNECT_OPTIONS = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
                    "keepalives_interval": 5, "keepalives_count": 3}

Connect = Callable[[], psycopg.Connection[Any]]

# The triggers of migration 0002, and the check (one round trip every CHECK_S) that they are all
# there and fire: without them the cache would never hear of a change.
_TRIGGERS = ("tracker_async_status_updated", "tracker_async_status_deleted", "tracker_async_status_truncated")
_CHECK_TRIGGERS = ("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('async_status') "
                   "AND tgname = ANY(%s) AND tgenabled IN ('O', 'A')")


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


class RowCache:
    """Job rows by id, at most ``max_entries`` (least recently used leave first). Thread-safe.

    The listener thread starts on first use in each process (so under gunicorn it starts in the
    worker, after the fork); until it is listening every read goes to the database.
    """

    def __init__(self, connect: Connect, *, max_entries: int = MAX_ENTRIES, ttl_s: float = TTL_S,
                 check_s: float = CHECK_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._connect = connect
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._check_s = check_s
        # The listener must have proved itself within this long for the cache to be used.
        self._trusted_for_s = 2 * check_s + 1.0
        self._clock = clock
        self._pid: int | None = None
        self._set_up_process()

    def _set_up_process(self) -> None:
        """Fresh state for this process: nothing inherited across a fork is trusted."""
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[int, tuple[float, Job]] = collections.OrderedDict()
        self._invalidations = 0
        self._listening = False
        self._proved_at = float("-inf")
        self._backend_pid: int | None = None
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
                    if entry[0] > now:
                        self._entries.move_to_end(job_id)
                        return entry[1]
                    del self._entries[job_id]
            seen = self._invalidations
        job = load(job_id)
        if trusted:
            with self._lock:
                # Kept only if no invalidation at all came in since before the read: one for this
                # row may have been meant for a change the read did not see.
                if self._listening and self._invalidations == seen:
                    self._remember(job_id, job, now)
        return job

    def _remember(self, job_id: int, job: Job, now: float) -> None:
        entries = self._entries
        entries[job_id] = (now + self._ttl_s, job)
        entries.move_to_end(job_id)
        # The oldest first: those that have expired, then as many as the bound needs.
        while entries:
            oldest_id, (expires_at, _job) = next(iter(entries.items()))
            if expires_at > now and len(entries) <= self._max_entries:
                break
            del entries[oldest_id]

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
                self._thread = threading.Thread(target=self._listen_forever, name="tracker-rowcache",
                                                daemon=True)
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
                    log.warning("row cache: not listening (%s: %s); reading from the database, "
                                "trying again in %.1f s", type(exc).__name__, first_line, backoff)
            finally:
                self._go_dark()
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _listen(self, conn: psycopg.Connection[Any], on_live: Callable[[], None]) -> None:
        """Apply notifications as they come; every ``check_s`` prove the connection and the triggers.

        Returns when close() is called; raises whatever the connection raises, and NotNotified.
        """
        live = False
        while not self._stopping.is_set():
            sent_at = self._clock()
            enabled = conn.execute(_CHECK_TRIGGERS, (list(_TRIGGERS),)).fetchone()
            if enabled is None or enabled[0] != len(_TRIGGERS):
                raise NotNotified("the async_status triggers of migration 0002 are missing or "
                                  "disabled (run `tracker migrate`)")
            # Notifications sent before the answer; psycopg keeps them until asked.
            for notify in conn.notifies(timeout=0):
                self._invalidate(notify.payload)
            if live:
                with self._lock:
                    self._proved_at = sent_at
            else:
                self._go_live(sent_at)
                live = True
                on_live()
            for notify in conn.notifies(timeout=self._check_s):
                self._invalidate(notify.payload)

    def _invalidate(self, payload: str) -> None:
        ids: list[int] | None = []
        for part in payload.split(","):
            try:
                ids.append(int(part))  # type: ignore[union-attr]
            except ValueError:
                ids = None  # "*", or anything unexpected: drop every row
                break
        with self._lock:
            self._invalidations += 1
            if ids is None:
                self._entries.clear()
                return
            for job_id in ids:
                self._entries.pop(job_id, None)

    def _go_live(self, proved_at: float) -> None:
        """LISTEN has succeeded: anything remembered before may have missed a notification."""
        with self._lock:
            self._entries.clear()
            self._invalidations += 1
            self._proved_at = proved_at
            self._listening = True

    def _go_dark(self) -> None:
        """Not listening any more: from now on notifications may be missed, so trust nothing."""
        with self._lock:
            self._listening = False
            self._backend_pid = None
            self._entries.clear()
            self._invalidations += 1
