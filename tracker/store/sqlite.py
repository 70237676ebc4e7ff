"""The JobStore on SQLite: each batch folded by ``tracker.merge`` itself, in Python."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Engine

from tracker import merge, timefmt
from tracker.errors import StoreUnavailable
from tracker.events import Event
from tracker.leases import RENEW_SLACK_S
from tracker.model import Applied, Ended
from tracker.store.engine import refused_as_error, unavailable_as_error
from tracker.store.jobs import JobStore, chunks
from tracker.store.tables import async_status, async_status_delivery, async_status_event, async_status_lease

_ID_CHUNK = 1000  # ids per IN (...) list: far below SQLite's parameter limit

_STATE = (
    async_status.c.id,
    async_status.c.status,
    async_status.c.start_time,
    async_status.c.initial_message,
    async_status.c.terminal_at,
    async_status.c.terminal_seq,
    async_status.c.terminal_event_id,
    async_status.c.message_at,
    async_status.c.message_seq,
    async_status.c.message_event_id,
    async_status.c.message,
    async_status.c.kind,
    async_status.c.progress,
    async_status.c.progress_at,
    async_status.c.progress_seq,
    async_status.c.progress_event_id,
    async_status.c.result,
    async_status.c.error_code,
    async_status.c.error_details,
    async_status.c.cancel_requested_at,
    async_status.c.cancel_seq,
    async_status.c.cancel_event_id,
    async_status.c.notify_url,
)
_WRITTEN = (
    "status",
    "message",
    "end_time",
    "terminal_at",
    "terminal_seq",
    "terminal_event_id",
    "message_at",
    "message_seq",
    "message_event_id",
    "progress",
    "progress_at",
    "progress_seq",
    "progress_event_id",
    "result",
    "error_code",
    "error_details",
    "cancel_requested_at",
    "cancel_seq",
    "cancel_event_id",
)


class SQLiteJobStore(JobStore):
    """Takes SQLite's write lock up front (``BEGIN IMMEDIATE``), then folds job by job."""

    def change_counter(self) -> Callable[[], int]:
        """SQLite's ``PRAGMA data_version`` on a DBAPI connection of its own, outside any
        transaction (a transaction's snapshot would freeze it, and hold up checkpoints): it moves
        when any other connection, in any process, commits."""
        held: list[Any] = []

        def counter() -> int:
            try:
                if not held:
                    held.append(self._engine.raw_connection())
                cursor = held[0].cursor()
                try:
                    cursor.execute("PRAGMA data_version")
                    return int(cursor.fetchone()[0])
                finally:
                    cursor.close()
            except sqlite3.OperationalError as exc:
                if held:
                    held.pop().invalidate()
                raise StoreUnavailable(f"SQLite: {exc}") from exc

        return counter

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._update = (
            sa.update(async_status)
            .where(async_status.c.id == sa.bindparam("job_id"))
            .values({name: sa.bindparam(name) for name in _WRITTEN})
        )
        self._keep = sqlite.insert(async_status_event).on_conflict_do_nothing()
        self._queue = sqlite.insert(async_status_delivery).on_conflict_do_nothing()
        self._renew = (
            sa.update(async_status_lease)
            .where(async_status_lease.c.job_id == sa.bindparam("lease_job_id"))
            .values(expires_at=sa.bindparam("lease_expires_at"))
        )

    def apply(self, events: Sequence[Event]) -> Applied:
        with refused_as_error(), unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(immediate=True)
            with conn.begin():
                return self._fold(conn, events)

    def _fold(self, conn: sa.Connection, events: Sequence[Event]) -> Applied:
        by_job: dict[int, list[Event]] = defaultdict(list)
        for event in events:
            by_job[event.job_id].append(event)
        ids = sorted(by_job)
        updates: list[dict[str, object]] = []
        kept: list[dict[str, object]] = []
        received = timefmt.now()
        found: set[int] = set()
        pending: set[int] = set()
        ended: list[Ended] = []
        queued: list[int] = []
        for chunk in chunks(ids, _ID_CHUNK):
            rows = conn.execute(
                sa.select(*_STATE).where(async_status.c.id.in_(chunk)).order_by(async_status.c.id).with_for_update()
            ).all()
            for row in rows:
                found.add(row.id)
                before = _state_of(row)
                after = merge.merge(before, by_job[row.id], _history(conn, row.id))
                if after != before:
                    updates.append(_params_of(row.id, after))
                if after.terminal is None:
                    pending.add(row.id)
                elif before.terminal is None:
                    ended.append(_ended(row, after))
                    if row.notify_url is not None:
                        queued.append(row.id)
                # The timeline keeps every event: a superset of merge.to_remember, the history's need.
                kept.extend(_kept_row(e, received) for e in by_job[row.id])
        if updates:
            conn.execute(self._update, updates)
        if kept:
            conn.execute(self._keep, kept)
        if queued:
            # SPEC §13: the webhooks of the jobs this batch ends, queued in the transaction that ends them
            conn.execute(
                self._queue, [{"job_id": job_id, "queued_at": received, "due_at": received} for job_id in queued]
            )
        if found:
            self._record_receipt(conn, sorted(found), pending)
        return Applied(
            changed_jobs=len(updates),
            missing_jobs=frozenset(ids) - found,
            ended=tuple(ended),
            queued_deliveries=tuple(queued),
        )

    def _record_receipt(self, conn: sa.Connection, job_ids: list[int], pending: set[int]) -> None:
        """Renew the leases of the PENDING jobs among ``job_ids`` from now; delete the others'."""
        now = timefmt.now()
        renewed: list[dict[str, object]] = []
        ended: list[int] = []
        for chunk in chunks(job_ids, _ID_CHUNK):
            leases = conn.execute(
                sa.select(
                    async_status_lease.c.job_id,
                    async_status_lease.c.heartbeat_timeout_s,
                    async_status_lease.c.expires_at,
                ).where(async_status_lease.c.job_id.in_(chunk))
            ).all()
            for job_id, timeout_s, expires_at in leases:
                if job_id not in pending:
                    ended.append(job_id)
                elif expires_at < now + dt.timedelta(seconds=timeout_s - RENEW_SLACK_S):
                    renewed.append({"lease_job_id": job_id, "lease_expires_at": now + dt.timedelta(seconds=timeout_s)})
        if renewed:
            conn.execute(self._renew, renewed)
        for chunk in chunks(ended, _ID_CHUNK):
            conn.execute(sa.delete(async_status_lease).where(async_status_lease.c.job_id.in_(chunk)))


def _key(at: dt.datetime | None, seq: int | None, event_id: str | None) -> merge.Key | None:
    """A key kept in three columns; None when they are NULL."""
    if at is None or seq is None or event_id is None:
        return None
    return merge.Key(at, seq, event_id)


def _state_of(row: sa.Row[*tuple[Any, ...]]) -> merge.JobState:
    terminal = latest = progress = None
    if (key := _key(row.terminal_at, row.terminal_seq, row.terminal_event_id)) is not None:
        kind = "succeeded" if row.status == merge.SUCCEEDED else "failed"
        terminal = merge.Terminal(key, kind, row.result, row.error_code, row.error_details)
    if (key := _key(row.message_at, row.message_seq, row.message_event_id)) is not None:
        latest = merge.MessageMark(key, row.message)
    if (key := _key(row.progress_at, row.progress_seq, row.progress_event_id)) is not None:
        progress = merge.ProgressMark(key, row.progress)
    cancel = _key(row.cancel_requested_at, row.cancel_seq, row.cancel_event_id)
    return merge.JobState(row.start_time, row.initial_message, terminal, latest, progress, cancel)


def _params_of(job_id: int, state: merge.JobState) -> dict[str, object]:
    terminal, latest, progress, cancel = state.terminal, state.latest_message, state.latest_progress, state.first_cancel
    return {
        "job_id": job_id,
        "status": state.status,
        "message": state.message,
        "end_time": state.end_time,
        "terminal_at": terminal.key.occurred_at if terminal else None,
        "terminal_seq": terminal.key.seq if terminal else None,
        "terminal_event_id": terminal.key.event_id if terminal else None,
        "message_at": latest.key.occurred_at if latest else None,
        "message_seq": latest.key.seq if latest else None,
        "message_event_id": latest.key.event_id if latest else None,
        "progress": state.progress,
        "progress_at": progress.key.occurred_at if progress else None,
        "progress_seq": progress.key.seq if progress else None,
        "progress_event_id": progress.key.event_id if progress else None,
        "result": state.result_json,
        "error_code": state.error_code,
        "error_details": state.error_details_json,
        "cancel_requested_at": cancel.occurred_at if cancel else None,
        "cancel_seq": cancel.seq if cancel else None,
        "cancel_event_id": cancel.event_id if cancel else None,
    }


def _ended(row: sa.Row[*tuple[Any, ...]], state: merge.JobState) -> Ended:
    assert state.end_time is not None
    return Ended(row.id, row.kind, state.status, row.start_time, state.end_time)


def _kept_row(event: Event, received: dt.datetime) -> dict[str, object]:
    return {
        "job_id": event.job_id,
        "event_id": event.event_id,
        "occurred_at": event.occurred_at,
        "seq": event.seq,
        "type": event.type,
        "message": event.message,
        "received_at": received,
        "progress": event.progress,
        "result": event.result_json,
        "error_code": event.error_code,
        "error_details": event.error_details_json,
    }


def _history(conn: sa.Connection, job_id: int) -> merge.History:
    def latest_at_or_before(limit: merge.Key) -> merge.Recalled:
        # Rare path (a terminal event arrived before an already-applied message or progress):
        # compare keys in Python, because text collation in the database need not match Python's order.
        event = async_status_event.c
        rows = conn.execute(
            sa.select(event.occurred_at, event.seq, event.event_id, event.message, event.progress).where(
                event.job_id == job_id,
                sa.or_(event.message.is_not(None), event.progress.is_not(None)),
                event.occurred_at <= limit.occurred_at,
            )
        ).all()
        eligible = [(merge.Key(r.occurred_at, r.seq, r.event_id), r) for r in rows]
        eligible = [(key, r) for key, r in eligible if key <= limit]
        messages = [merge.MessageMark(key, r.message) for key, r in eligible if r.message is not None]
        progresses = [merge.ProgressMark(key, r.progress) for key, r in eligible if r.progress is not None]
        return merge.Recalled(max(messages, default=None), max(progresses, default=None))

    return latest_at_or_before
