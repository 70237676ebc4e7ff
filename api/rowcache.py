"""An exact in-process cache of job rows, dropped by PostgreSQL's NOTIFY when a row changes.

``RowCache`` composes three parts: ``RowMap`` (the rows, least recently used leaving first, none
kept longer than its TTL), ``Trust`` (whether the listener has proved itself recently enough for
the rows to be served) and ``ChangeListener`` (the thread with a connection of its own that
hears of changes, proves itself and reads rows in bulk, connecting again with capped back-off).
Why the cache never serves a wrong row (the notifications, the counter, the listener's proof,
the safety net) is argued in docs/rowcache.md; keep that argument and this code in step.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import psycopg
import sqlalchemy as sa

from tracker import timefmt
from tracker.backoff import Backoff
from tracker.labels import as_labels
from tracker.model import Job
from tracker.outages import OutageLog

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
_DUE_PER_LOCK = 1_000  # expiries looked at per hold of the lock, so that requests need not wait long
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
# there and fire, and that the server takes writes: without the triggers the cache would never hear
# of a change; on a server that takes none (a standby, or a primary its failover manager fenced
# read-only), the changes are made elsewhere and it would never hear of them either.
_TRIGGERS = ["tracker_async_status_updated", "tracker_async_status_deleted", "tracker_async_status_truncated"]
_CHECK_TRIGGERS = (
    "SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('async_status') "
    "AND tgname = ANY(%s) AND tgenabled IN ('O', 'A')), "
    "pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'"
)
# The public columns, as tracker.store reads them for GET (tracker.store.tables.PUBLIC_COLUMNS), in
# the order of tracker.model.Job: the JSON texts as text, read by no one.
_PUBLIC = (
    "id, status, start_time, end_time, message, kind, labels, progress, result::text, error_code, "
    "error_details::text, cancel_requested_at, notify_url, notify_state, notify_attempts"
)
_ROWS_BY_ID = f"SELECT {_PUBLIC} FROM async_status WHERE id = ANY(%s::bigint[])"
_NEWEST_ROWS = f"SELECT {_PUBLIC} FROM async_status ORDER BY id DESC LIMIT %s"


class NotNotified(RuntimeError):
    """The database would not tell the listener about changes (no triggers, or it takes no writes):
    the cache stays off until a connection proves otherwise."""


def connector_for(engine: sa.Engine) -> Connect:
    """A function opening a new autocommit psycopg connection to the database behind ``engine``:
    the same hosts (all of a multi-host URL, tried in turn) and ``target_session_attrs``.

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


class RowMap:
    """Job rows by id, each kept until ``ttl_s`` after it was read, at most ``max_entries`` of them
    (the least recently used leave first). No I/O, no lock: RowCache's lock guards it.

    Each row's expiry is also queued in the order the rows were read, which is that of their
    expiry, so that the rows about to expire are found without a scan (``take_due``).
    """

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        # (expires_at, id) in the order rows were read; pairs of rows gone or read again are skipped.
        self._expiries: collections.deque[tuple[float, int]] = collections.deque()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    @property
    def queued(self) -> int:
        """How many expiries are queued (stale ones included)."""
        return len(self._expiries)

    def get(self, job_id: int, now: float) -> Job | None:
        """The row, now the most recently used and asked for at ``now``; None when it is not here
        or has expired (then it leaves)."""
        entry = self._entries.get(job_id)
        if entry is None:
            return None
        if entry.expires_at > now:
            entry.used_at = now
            self._entries.move_to_end(job_id)
            return entry.job
        del self._entries[job_id]
        return None

    def remember(self, job: Job, read_at: float, used_at: float) -> None:
        """Keep ``job`` as read at ``read_at`` and asked for at ``used_at`` (-inf: not asked for), as
        the most recently used row; the least recently used leave while there are too many."""
        entry = _Entry(read_at + self._ttl_s, job, used_at)
        self._entries[job.id] = entry
        self._entries.move_to_end(job.id)
        self._expiries.append((entry.expires_at, job.id))
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def add(self, job: Job, read_at: float) -> None:
        """Keep ``job``, read at ``read_at`` and asked for by no one, if its id is not here and
        there is room: such rows never push out one a request asked for."""
        if job.id not in self._entries and len(self._entries) < self._max_entries:
            self.remember(job, read_at, used_at=float("-inf"))

    def refresh(self, job: Job, read_at: float) -> bool:
        """Replace the row of ``job.id``, if it is still here, by ``job`` as read at ``read_at``, in
        its place and with when it was last asked for. Whether it was here and differed."""
        entry = self._entries.get(job.id)
        if entry is None:
            return False  # it left on purpose
        self._entries[job.id] = fresh = _Entry(read_at + self._ttl_s, job, entry.used_at)
        self._expiries.append((fresh.expires_at, job.id))
        return entry.job != job

    def drop(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            self._entries.pop(job_id, None)

    def clear(self) -> None:
        self._entries.clear()
        self._expiries.clear()

    def take_due(self, now: float, horizon: float, idle_s: float, count: int) -> tuple[list[int], bool]:
        """Look at the next ``count`` queued expiries: the ids of the rows asked for within
        ``idle_s`` of ``now`` that expire by ``horizon``, to be read again (``refresh`` queues
        their new expiry). Rows not asked for that long leave once expired, or are queued again
        to be looked at later. Also whether nothing more is due by ``horizon``."""
        due: list[int] = []
        for _ in range(count):
            if not self._expiries or self._expiries[0][0] > horizon:
                return due, True
            expires_at, job_id = self._expiries.popleft()
            entry = self._entries.get(job_id)
            if entry is None or entry.expires_at != expires_at:
                continue  # gone, or read again since
            if now - entry.used_at <= idle_s:
                due.append(job_id)
            elif expires_at <= now:
                del self._entries[job_id]
            else:
                self._expiries.append((expires_at, job_id))  # may yet be asked for: look again later
        return due, False


class Trust:
    """Whether the rows may be served: while the listener listens and has proved so within
    ``window_s``. No I/O, no lock: RowCache's lock guards it.

    ``until`` is the last moment they may be (-inf while not listening), so that a request
    checks one number.
    """

    __slots__ = ("_window_s", "listening", "until")

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self.listening = False
        self.until = float("-inf")

    def live(self, proved_at: float) -> None:
        """LISTEN has succeeded, proved with a round trip sent at ``proved_at``."""
        self.listening = True
        self.until = proved_at + self._window_s

    def proved(self, at: float) -> None:
        """The listener proved itself again with a round trip sent at ``at`` (nothing if not listening)."""
        if self.listening:
            self.until = at + self._window_s

    def dark(self) -> None:
        """Not listening any more: notifications may be missed from now on."""
        self.listening = False
        self.until = float("-inf")


class ListenerHooks(Protocol):
    """What the listener tells, and asks, the rows it keeps exact; each is called on its thread."""

    def went_live(self, proved_at: float) -> None:
        """LISTEN has succeeded on a new connection, proved by a round trip sent at ``proved_at``."""

    def proved(self, at: float) -> None:
        """The connection and the triggers were proved again, by a round trip sent at ``at``."""

    def went_dark(self) -> None:
        """The connection failed or was closed: notifications may be missed from now on."""

    def notified(self, job_ids: set[int] | None) -> None:
        """A notification named these rows (None: any row may have changed)."""

    def rows_due(self) -> list[int]:
        """The ids of the rows to read again now."""

    def rows_read(self, jobs: list[Job], read_at: float, changed: set[int], refresh: bool) -> None:
        """Rows read at ``read_at``; ``changed``: the ids notifications have named since (all
        notifications sent before the read have been applied). ``refresh``: read again because
        they were due, else read to fill the cache (the newest rows)."""


class ChannelHooks(Protocol):
    """A listener of a channel of its own (besides CHANNEL) that rides on the row cache's
    connection (api/revocations.py's), told on the listener's thread as ``ListenerHooks`` are."""

    @property
    def channel(self) -> str:
        """The channel to LISTEN on: an identifier PostgreSQL takes unquoted."""

    def went_live(self, proved_at: float) -> None:
        """LISTEN on ``channel`` has succeeded, proved by a round trip sent at ``proved_at``."""

    def proved(self, at: float) -> None:
        """The connection was proved again, by a round trip sent at ``at``."""

    def went_dark(self) -> None:
        """The connection failed or was closed: notifications may be missed from now on."""

    def notified(self, payload: str) -> None:
        """A notification on ``channel``."""

    def attached(self, listen: Callable[[], None]) -> None:
        """Told once, by the RowCache it rides on: ``listen()`` starts the listener in this process
        if it has not started (cheap: call it whenever it is wanted)."""


class ChangeListener:
    """A thread, started on first use in each process, with a connection of its own that LISTENs
    on ``CHANNEL`` (and on the channel of each of ``channels``) until ``close()`` and tells
    ``hooks`` (and each of ``channels``) what it hears.

    Every ``check_s`` it proves itself with one round trip that checks the triggers are there and
    enabled (before whose answer PostgreSQL has sent every notification of what committed before
    it), then reads again the rows due. Once live it reads the ``warm_rows`` newest rows (0:
    none). On any failure it tells ``hooks`` it went dark, and connects again after a capped
    back-off, started afresh once it is live again.
    """

    def __init__(
        self,
        connect: Connect,
        hooks: ListenerHooks,
        *,
        check_s: float,
        warm_rows: int,
        clock: Callable[[], float],
        channels: Sequence[ChannelHooks] = (),
    ) -> None:
        self._connect = connect
        self._hooks = hooks
        self._channels = {hooks.channel: hooks for hooks in channels}
        self._check_s = check_s
        self._warm_rows = warm_rows
        self._clock = clock
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.backend_pid: int | None = None  # the listening connection's PostgreSQL backend, while it has one
        # Said once when it stops listening, then every minute: not at every attempt to connect.
        self._outage = OutageLog(log, "row cache: listening again")

    def start(self) -> None:
        """Start the thread unless it has started or the listener is closed; cheap to call per request."""
        if self._thread is not None or self._stopping.is_set():
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tracker-rowcache", daemon=True)
                self._thread.start()

    def close(self, timeout: float) -> None:
        """Stop the thread (it notices within ``check_s``) and wait for it at most ``timeout`` seconds."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        """Runs on the listener thread until close(): listen, and connect again after a failure."""
        backoff = Backoff(first=_MIN_BACKOFF_S, cap=_MAX_BACKOFF_S)
        while not self._stopping.is_set():
            delay = 0.0
            try:
                with self._connect() as conn:
                    self._listen(conn, backoff)
            except Exception as exc:  # noqa: BLE001 - any failure: stop trusting, reconnect
                delay = backoff.next()
                if not self._stopping.is_set():
                    # The type and first line only: never the connection string, which may hold a password.
                    first_line = (str(exc).strip().splitlines() or [""])[0]
                    self._outage.failed(
                        "row cache: not listening",
                        f"{type(exc).__name__}: {first_line}; reading from the database, trying again with back-off",
                    )
                    log.debug("row cache: trying to listen again in %.1f s", delay)
            finally:
                self.backend_pid = None
                self._hooks.went_dark()
                for other in self._channels.values():
                    other.went_dark()
            self._stopping.wait(delay)

    def _listen(self, conn: psycopg.Connection[Any], backoff: Backoff) -> None:
        """LISTEN, then turn every ``check_s``: prove, read again the rows due, apply notifications.

        Returns when close() is called; raises whatever the connection raises, and NotNotified.
        """
        for channel in (CHANNEL, *self._channels):
            conn.execute(f"LISTEN {channel}")
        self.backend_pid = conn.info.backend_pid
        live = False
        while not self._stopping.is_set():
            sent_at = self._clock()
            self._prove(conn)
            if live:
                self._hooks.proved(sent_at)
                for other in self._channels.values():
                    other.proved(sent_at)
                due = self._hooks.rows_due()
                for start in range(0, len(due), _IDS_PER_READ):
                    self._read(conn, _ROWS_BY_ID, (due[start : start + _IDS_PER_READ],), refresh=True)
            else:
                self._hooks.went_live(sent_at)
                for other in self._channels.values():
                    other.went_live(sent_at)
                live = True
                backoff.reset()
                if self._outage.problem is None:
                    log.info("row cache: listening on %s", CHANNEL)
                self._outage.recovered()
                if self._warm_rows:
                    self._read(conn, _NEWEST_ROWS, (self._warm_rows,), refresh=False)
            for notify in conn.notifies(timeout=self._check_s):
                self._tell(notify)

    def _prove(self, conn: psycopg.Connection[Any]) -> set[int] | None:
        """Check the triggers and that the server takes writes, then apply every notification
        PostgreSQL sent before answering: all of those of changes committed before the check was
        sent. The ids they named; None for every row. Raises NotNotified without the triggers, or
        on a server that takes no writes."""
        checked = conn.execute(_CHECK_TRIGGERS, (_TRIGGERS,)).fetchone()
        if checked is None or checked[0] != len(_TRIGGERS):
            raise NotNotified(
                "the async_status triggers of migration 0002 are missing or disabled (run `tracker migrate`)"
            )
        if checked[1]:
            raise NotNotified("the server takes no writes (a standby, or fenced read-only): changes happen elsewhere")
        named: set[int] | None = set()
        for notify in conn.notifies(timeout=0):  # psycopg kept those that came with the answer
            of_rows, ids = self._tell(notify)
            if of_rows:
                named = None if ids is None or named is None else named | ids
        return named

    def _tell(self, notify: psycopg.Notify) -> tuple[bool, set[int] | None]:
        """Hand a notification to whoever listens on its channel: whether it was of rows, and the ids it named."""
        if notify.channel != CHANNEL:
            self._channels[notify.channel].notified(notify.payload)
            return False, None
        ids = _ids_in(notify.payload)
        self._hooks.notified(ids)
        return True, ids

    def _read(self, conn: psycopg.Connection[Any], query: str, params: tuple[object, ...], refresh: bool) -> None:
        """Read rows on this connection, prove it (so every change committed since the read has
        been applied), and hand the rows over with the ids changed meanwhile (none if any row may
        have changed)."""
        read_at = self._clock()
        rows = conn.execute(query, params).fetchall()
        changed = self._prove(conn)
        if changed is not None:
            self._hooks.rows_read(list(_jobs_of(rows)), read_at, changed, refresh)


class RowCache:
    """Job rows by id, at most ``max_entries`` (least recently used leave first). Thread-safe.

    The listener thread starts on first use in each process (so under gunicorn it starts in the
    worker, after the fork); until it is listening every read goes to the database. ``warm_rows``
    newest rows are read when it starts listening (0: none). ``on_change`` is called on the
    listener thread with the ids of every notification (None: any row may have changed, as when
    it starts listening), after those rows have left the cache: waits hear of changes this way.
    ``channels`` listen on the same connection, each on a channel of its own (ChannelHooks).
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
        channels: Sequence[ChannelHooks] = (),
    ) -> None:
        self._connect = connect
        self._on_change = on_change
        self._channels = channels
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._idle_s = idle_s
        self._check_s = check_s
        self._warm_rows = max_entries if warm_rows is None else min(warm_rows, max_entries)
        # Used rows are read again when they would expire before the listener's next turn or two.
        self._refresh_ahead_s = min(2 * check_s + 0.5, ttl_s / 2)
        self._clock = clock
        self._pid: int | None = None
        self._set_up_process()
        for channel in channels:
            channel.attached(self.listen)

    def _set_up_process(self) -> None:
        """Fresh state for this process: nothing inherited across a fork is trusted."""
        self._lock = threading.Lock()
        self._rows = RowMap(self._max_entries, self._ttl_s)
        # The listener must have proved itself within this long for the cache to be used.
        self._trust = Trust(window_s=2 * self._check_s + 1.0)
        self._invalidations = 0
        self._missed = 0
        self._listener = ChangeListener(
            self._connect,
            self,
            check_s=self._check_s,
            warm_rows=self._warm_rows,
            clock=self._clock,
            channels=self._channels,
        )
        self._pid = os.getpid()

    # --- the read path (request threads) ---

    def listen(self) -> None:
        """Start the listener in this process unless it has started; cheap to call per request."""
        if self._pid != os.getpid():
            self._set_up_process()
        self._listener.start()

    def get(self, job_id: int, load: Callable[[int], Job]) -> Job:
        """The job's row: from the cache when it is there and trusted, else ``load(job_id)``.

        Raises what ``load`` raises (JobNotFound, StoreUnavailable); such outcomes are not kept.
        """
        self.listen()
        now = self._clock()
        with self._lock:
            trusted = now <= self._trust.until
            if trusted:
                job = self._rows.get(job_id, now)
                if job is not None:
                    return job
            seen = self._invalidations
        job = load(job_id)
        if trusted:
            with self._lock:
                # Kept only if no invalidation at all came in since before the read: one for this
                # row may have been meant for a change the read did not see.
                if self._trust.listening and self._invalidations == seen:
                    self._rows.remember(job, now, used_at=now)
        return job

    # --- what tests and operators may look at ---

    @property
    def listening(self) -> bool:
        """Whether the listener is connected and listening (in this process)."""
        return self._pid == os.getpid() and self._trust.listening

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
        return self._listener.backend_pid

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._rows

    def close(self, timeout: float = 10.0) -> None:
        """Stop the listener (it notices within ``check_s``) and forget every row."""
        self._listener.close(timeout)
        self.went_dark()

    # --- what the listener tells (ListenerHooks, on its thread) ---

    def went_live(self, proved_at: float) -> None:
        # Anything remembered before may have missed a notification.
        with self._lock:
            self._forget_all()
            self._trust.live(proved_at)
        if self._on_change is not None:
            self._on_change(None)  # whatever changed while nobody listened

    def proved(self, at: float) -> None:
        with self._lock:
            self._trust.proved(at)

    def went_dark(self) -> None:
        # From now on notifications may be missed, so trust nothing.
        with self._lock:
            self._trust.dark()
            self._forget_all()

    def notified(self, job_ids: set[int] | None) -> None:
        with self._lock:
            if job_ids is None:
                self._forget_all()
            else:
                self._invalidations += 1
                self._rows.drop(job_ids)
        if self._on_change is not None:
            self._on_change(job_ids)

    def rows_due(self) -> list[int]:
        """Rows asked for within ``idle_s`` that would expire before the listener's next turn or
        two; the expired others leave."""
        now = self._clock()
        horizon = now + self._refresh_ahead_s
        due: list[int] = []
        with self._lock:
            left = self._rows.queued
        while left > 0:
            with self._lock:
                found, done = self._rows.take_due(now, horizon, self._idle_s, min(_DUE_PER_LOCK, left))
            due += found
            left -= _DUE_PER_LOCK
            if done:
                break
        return due

    def rows_read(self, jobs: list[Job], read_at: float, changed: set[int], refresh: bool) -> None:
        # Rows a notification named since the read are not kept: they may be older than its change.
        with self._lock:
            if not self._trust.listening:
                return
            for job in jobs:
                if job.id in changed:
                    continue
                if not refresh:
                    self._rows.add(job, read_at)
                elif self._rows.refresh(job, read_at):
                    self._missed += 1
                    log.warning("row cache: job %d had changed without a notification; corrected", job.id)

    def _forget_all(self) -> None:
        """Drop every row, and count it as an invalidation (so reads in flight are not kept);
        the caller holds the lock."""
        self._rows.clear()
        self._invalidations += 1


def _ids_in(payload: str) -> set[int] | None:
    """The ids a notification names; None when it means every row ("*", or anything unexpected)."""
    try:
        return {int(part) for part in payload.split(",")}
    except ValueError:
        return None


def _jobs_of(rows: Iterable[tuple[Any, ...]]) -> Iterable[Job]:
    """Rows of ``_PUBLIC`` as tracker.store returns them: times in UTC, labels as sorted pairs."""
    for (
        job_id,
        status,
        start_time,
        end_time,
        message,
        kind,
        labels,
        progress,
        result_json,
        error_code,
        error_details_json,
        cancel_requested_at,
        notify_url,
        notify_state,
        notify_attempts,
    ) in rows:
        yield Job(
            job_id,
            status,
            start_time.astimezone(timefmt.UTC),
            _utc(end_time),
            message,
            kind,
            as_labels(labels),
            progress,
            result_json,
            error_code,
            error_details_json,
            _utc(cancel_requested_at),
            notify_url,
            notify_state,
            notify_attempts,
        )


def _utc(instant: dt.datetime | None) -> dt.datetime | None:
    return None if instant is None else instant.astimezone(timefmt.UTC)
