"""Jobs in the database: create, read, and apply batches of events under the merge rule.

Errors: ``JobNotFound`` for a missing row; ``StoreUnavailable`` when the database cannot be
reached or fails mid-transaction (retry later: nothing was committed); anything else from the
database is a bug or bad data and propagates.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from tracker import merge, timefmt
from tracker.db import StoreUnavailable, async_status, async_status_message, unavailable_as_error
from tracker.events import Event

_ID_CHUNK = 1000  # ids per IN (...) list: far below every backend's parameter limit


class JobNotFound(LookupError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


@dataclasses.dataclass(frozen=True)
class Job:
    """The public row, as GET returns it."""

    id: int
    status: str
    start_time: dt.datetime
    end_time: dt.datetime | None
    message: str | None


@dataclasses.dataclass(frozen=True)
class Applied:
    """What a batch did: rows changed, and the job ids that have no row (their events not applied)."""

    changed_jobs: int
    missing_jobs: frozenset[int]


_PUBLIC = (async_status.c.id, async_status.c.status, async_status.c.start_time,
           async_status.c.end_time, async_status.c.message)
_STATE = (async_status.c.id, async_status.c.status, async_status.c.start_time,
          async_status.c.initial_message,
          async_status.c.terminal_at, async_status.c.terminal_seq, async_status.c.terminal_event_id,
          async_status.c.message_at, async_status.c.message_seq, async_status.c.message_event_id,
          async_status.c.message)


class JobStore:
    """The async_status table behind one engine. Safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._get = sa.select(*_PUBLIC).where(async_status.c.id == sa.bindparam("job_id"))
        self._update = (
            sa.update(async_status)
            .where(async_status.c.id == sa.bindparam("job_id"))
            .values({name: sa.bindparam(name) for name in _WRITTEN})
        )
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._remember = insert(async_status_message).on_conflict_do_nothing()

    @property
    def engine(self) -> Engine:
        return self._engine

    def create_job(self, message: str | None = None) -> Job:
        """Insert a PENDING job and return it; its id is new and never reused."""
        text = merge.DEFAULT_MESSAGE if message is None else message
        started = timefmt.now()
        statement = (
            sa.insert(async_status)
            .values(status=merge.PENDING, message=text, initial_message=text, start_time=started)
            .returning(*_PUBLIC)
        )
        with unavailable_as_error(), self._engine.begin() as conn:
            row = conn.execute(statement).one()
        return Job(*row)

    def get_job(self, job_id: int) -> Job:
        """The job's public row; raises JobNotFound."""
        with unavailable_as_error(), self._engine.connect() as conn:
            row = conn.execute(self._get, {"job_id": job_id}).first()
        if row is None:
            raise JobNotFound(job_id)
        return Job(*row)

    def apply(self, events: Sequence[Event]) -> Applied:
        """Fold a batch of events into their jobs in one transaction, committed before returning.

        Rows are locked in id order, so concurrent batches over the same jobs serialise instead
        of losing updates or deadlocking. Raises StoreUnavailable when nothing was committed.
        """
        by_job: dict[int, list[Event]] = defaultdict(list)
        for event in events:
            by_job[event.job_id].append(event)
        ids = sorted(by_job)
        with unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(immediate=True)
            with conn.begin():
                updates, remembered = [], []
                found: set[int] = set()
                for chunk in _chunks(ids, _ID_CHUNK):
                    rows = conn.execute(
                        sa.select(*_STATE)
                        .where(async_status.c.id.in_(chunk))
                        .order_by(async_status.c.id)
                        .with_for_update()
                    ).all()
                    for row in rows:
                        found.add(row.id)
                        before = _state_of(row)
                        after = merge.merge(before, by_job[row.id], _history(conn, row.id))
                        if after != before:
                            updates.append(_params_of(row.id, after))
                        remembered.extend(
                            _remembered_row(e) for e in merge.to_remember(after, by_job[row.id])
                        )
                if updates:
                    conn.execute(self._update, updates)
                if remembered:
                    conn.execute(self._remember, remembered)
        return Applied(changed_jobs=len(updates), missing_jobs=frozenset(ids) - found)


_WRITTEN = ("status", "message", "end_time", "terminal_at", "terminal_seq", "terminal_event_id",
            "message_at", "message_seq", "message_event_id")


def _state_of(row: sa.Row) -> merge.JobState:
    terminal = None
    if row.terminal_at is not None:
        key = merge.Key(row.terminal_at, row.terminal_seq, row.terminal_event_id)
        terminal = merge.Terminal(key, "succeeded" if row.status == merge.SUCCEEDED else "failed")
    latest = None
    if row.message_at is not None:
        latest = merge.MessageMark(merge.Key(row.message_at, row.message_seq, row.message_event_id),
                                   row.message)
    return merge.JobState(row.start_time, row.initial_message, terminal, latest)


def _params_of(job_id: int, state: merge.JobState) -> dict[str, object]:
    terminal, latest = state.terminal, state.latest_message
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
    }


def _remembered_row(event: Event) -> dict[str, object]:
    return {"job_id": event.job_id, "event_id": event.event_id, "occurred_at": event.occurred_at,
            "seq": event.seq, "message": event.message}


def _history(conn: sa.Connection, job_id: int) -> merge.History:
    def latest_at_or_before(limit: merge.Key) -> merge.MessageMark | None:
        # Rare path (a terminal event arrived before an already-applied message): compare keys
        # in Python, because text collation in the database need not match Python's order.
        rows = conn.execute(
            sa.select(async_status_message.c.occurred_at, async_status_message.c.seq,
                      async_status_message.c.event_id, async_status_message.c.message)
            .where(async_status_message.c.job_id == job_id,
                   async_status_message.c.occurred_at <= limit.occurred_at)
        ).all()
        marks = [merge.MessageMark(merge.Key(r.occurred_at, r.seq, r.event_id), r.message) for r in rows]
        eligible = [m for m in marks if m.key <= limit]
        return max(eligible, default=None)

    return latest_at_or_before


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
