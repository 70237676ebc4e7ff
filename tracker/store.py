"""Jobs in the database: create, read, and apply batches of events under the merge rule.

PostgreSQL folds a batch in two statements, whatever its size: lock the rows, then merge in SQL
(``_MERGE_IN_POSTGRESQL``, the rule of ``tracker.merge`` restated over sets). SQLite folds with
``tracker.merge`` itself.

Errors: ``JobNotFound`` for a missing row; ``StoreUnavailable`` when the database cannot be
reached or fails mid-transaction (retry later: nothing was committed); anything else from the
database is a bug or bad data and propagates.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
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
        self._remember = sqlite.insert(async_status_message).on_conflict_do_nothing()
        self._in_postgresql = engine.dialect.name == "postgresql"

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
        # One statement needs no transaction around it: in autocommit the driver sends no BEGIN
        # before it and no ROLLBACK after, two of the round trips a GET would otherwise wait on.
        with unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            row = conn.execute(self._get, {"job_id": job_id}).first()
        if row is None:
            raise JobNotFound(job_id)
        return Job(*row)

    def apply(self, events: Sequence[Event]) -> Applied:
        """Fold a batch of events into their jobs in one transaction, committed before returning.

        Rows are locked in id order, so concurrent batches over the same jobs serialise instead
        of losing updates or deadlocking. Raises StoreUnavailable when nothing was committed.
        A PostgreSQL connection that has folded a batch keeps JIT and sequential scans off for
        the rest of its session (see ``_PLAN_FOR_BATCHES``).
        """
        with unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(immediate=True)
            if not self._in_postgresql:
                with conn.begin():
                    return self._fold_in_python(conn, events)
            planned = conn.connection.info.get(_PLANNED_FOR_BATCHES, False)
            with conn.begin():
                if not planned:
                    conn.execute(_PLAN_FOR_BATCHES)
                applied = _fold_in_postgresql(conn, events)
            # Only now: had the transaction failed, the settings would have been undone with it.
            conn.connection.info[_PLANNED_FOR_BATCHES] = True
            return applied

    def _fold_in_python(self, conn: sa.Connection, events: Sequence[Event]) -> Applied:
        by_job: dict[int, list[Event]] = defaultdict(list)
        for event in events:
            by_job[event.job_id].append(event)
        ids = sorted(by_job)
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


def _fold_in_postgresql(conn: sa.Connection, events: Sequence[Event]) -> Applied:
    # The ids travel as one array literal: psycopg adapts a list of ints one by one.
    ids = "{" + ",".join(map(str, sorted({event.job_id for event in events}))) + "}"
    missing = conn.execute(_LOCK_IN_POSTGRESQL, {"ids": ids}).scalar_one()
    # The events go as one JSON text: orjson writes it far faster than the driver adapts
    # parameters one by one, and PostgreSQL reads the instants back exactly (µs, with offset).
    # orjson writes an Event (a dataclass) as an object of its fields, which the merge reads by name.
    batch = orjson.dumps(list(events)).decode()
    # A new statement, so a new snapshot: it sees everything committed by whoever held these
    # locks before us, message history included.
    changed = conn.execute(_MERGE_IN_POSTGRESQL, {"events": batch, "ids": ids}).scalar_one()
    return Applied(changed_jobs=changed, missing_jobs=frozenset(missing))


# Set once on each pooled connection that folds batches, for its whole session (a round trip
# per batch is worth saving: it is on the path of every event's latency). The planner prices
# the history lookup high enough to JIT-compile the merge, which takes longer than running it;
# and on a table of some ten thousand rows it scans all of them, twice, rather than look a
# batch's rows up by primary key: several times slower in measurement (docs/performance.md),
# and worse as the table grows. The statements are prepared (psycopg does so from their fifth
# run); a generic plan spares each small batch 0.9 ms of planning the merge afresh (large
# batches got the generic plan anyway). No setting changes what any statement returns.
_PLAN_FOR_BATCHES = sa.text("SELECT set_config('jit', 'off', false), set_config('enable_seqscan', 'off', false), "
                            "set_config('plan_cache_mode', 'force_generic_plan', false)")
_PLANNED_FOR_BATCHES = "tracker.store: planned for batches"


def _compact(sql: str) -> sa.TextClause:
    """The statement without its comment lines and with each run of white space made one space.

    psycopg converts and caches a query's text only up to 4,096 characters
    (``psycopg._queries.MAX_CACHED_STATEMENT_LENGTH``); a longer one is split afresh on every
    execution. Only for statements whose literals hold no runs of white space; a comment must
    have its own line (on one line, a comment after code would swallow the rest of the statement).
    """
    lines = (line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    compacted = " ".join(" ".join(lines).split())
    if "--" in compacted:
        raise ValueError("a comment after code on the same line: give it a line of its own")
    return sa.text(compacted)


# Locking in id order is what makes concurrent batches over the same jobs wait for each other
# instead of deadlocking. It answers with the ids that have no row (usually none), not with the
# rows it locked.
_LOCK_IN_POSTGRESQL = sa.text("""
WITH locked AS (
    SELECT id FROM async_status WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id FOR UPDATE
)
SELECT ARRAY(SELECT unnest(CAST(:ids AS bigint[])) EXCEPT ALL SELECT id FROM locked)
""")

# tracker.merge over a whole batch at once. Keys compare as (occurred_at, seq, event_id) with
# event_id in the "C" collation, which is Python's order for these ASCII texts. Ties keep what
# ``merge.merge`` keeps: the stored state first, then the earlier event of the batch (``n``).
_MERGE_IN_POSTGRESQL = _compact("""
WITH batch AS (
    SELECT e.job_id, e.event_id COLLATE "C" AS event_id, e.occurred_at, e.seq, e.type, e.message, e.n
    FROM ROWS FROM (json_to_recordset(CAST(:events AS json)) AS (
             job_id bigint, event_id text, occurred_at timestamptz, seq bigint, type text, message text))
         WITH ORDINALITY AS e(job_id, event_id, occurred_at, seq, type, message, n)
),
job AS (
    SELECT id, start_time, initial_message, status, terminal_at, terminal_seq,
           terminal_event_id COLLATE "C" AS terminal_event_id,
           message_at, message_seq, message_event_id COLLATE "C" AS message_event_id, message
    FROM async_status WHERE id = ANY(CAST(:ids AS bigint[]))
),
-- t: the earliest terminal event by key, the stored one or one of the batch
terminal AS (
    SELECT DISTINCT ON (job_id) job_id, at, seq, event_id, type
    FROM (
        SELECT id AS job_id, terminal_at AS at, terminal_seq AS seq, terminal_event_id AS event_id,
               lower(status) AS type, 0 AS n
        FROM job WHERE terminal_at IS NOT NULL
        UNION ALL
        SELECT job_id, occurred_at, seq, event_id, type, n FROM batch WHERE type <> 'progress'
    ) AS candidate
    ORDER BY job_id, at, seq, event_id, n
),
folded AS (
    SELECT job.*, t.at AS t_at, t.seq AS t_seq, t.event_id AS t_event_id, t.type AS t_type
    FROM job LEFT JOIN terminal AS t ON t.job_id = job.id
),
-- the latest message event in R (key <= t's): the stored one if still in R, else the latest
-- such in the history; or one of the batch
latest AS (
    SELECT DISTINCT ON (job_id) job_id, at, seq, event_id, message
    FROM (
        SELECT id AS job_id, message_at AS at, message_seq AS seq, message_event_id AS event_id,
               message, 0 AS n
        FROM folded
        WHERE message_at IS NOT NULL
          AND (t_at IS NULL OR (message_at, message_seq, message_event_id) <= (t_at, t_seq, t_event_id))
        UNION ALL
        SELECT f.id, h.occurred_at, h.seq, h.event_id, h.message, 0
        FROM folded AS f CROSS JOIN LATERAL (
            SELECT occurred_at, seq, event_id COLLATE "C" AS event_id, message
            FROM async_status_message
            WHERE job_id = f.id
              AND (occurred_at, seq, event_id COLLATE "C") <= (f.t_at, f.t_seq, f.t_event_id)
            ORDER BY occurred_at DESC, seq DESC, event_id COLLATE "C" DESC
            LIMIT 1
        ) AS h
        WHERE f.message_at IS NOT NULL
          AND (f.message_at, f.message_seq, f.message_event_id) > (f.t_at, f.t_seq, f.t_event_id)
        UNION ALL
        SELECT b.job_id, b.occurred_at, b.seq, b.event_id, b.message, b.n
        FROM batch AS b JOIN folded AS f ON f.id = b.job_id
        WHERE b.message IS NOT NULL
          AND (f.t_at IS NULL OR (b.occurred_at, b.seq, b.event_id) <= (f.t_at, f.t_seq, f.t_event_id))
    ) AS candidate
    ORDER BY job_id, at DESC, seq DESC, event_id DESC, n
),
-- merge.to_remember: the batch's message events inside R
remembered AS (
    INSERT INTO async_status_message (job_id, event_id, occurred_at, seq, message)
    SELECT b.job_id, b.event_id, b.occurred_at, b.seq, b.message
    FROM batch AS b JOIN folded AS f ON f.id = b.job_id
    WHERE b.message IS NOT NULL
      AND (f.t_at IS NULL OR (b.occurred_at, b.seq, b.event_id) <= (f.t_at, f.t_seq, f.t_event_id))
    ON CONFLICT DO NOTHING
),
next AS (
    SELECT f.id,
           CASE f.t_type WHEN 'succeeded' THEN 'SUCCEEDED' WHEN 'failed' THEN 'FAILED' ELSE 'PENDING' END
               AS status,
           CASE WHEN l.job_id IS NULL THEN f.initial_message ELSE l.message END AS message,
           CASE WHEN f.t_at IS NOT NULL THEN greatest(f.t_at, f.start_time) END AS end_time,
           f.t_at, f.t_seq, f.t_event_id, l.at AS l_at, l.seq AS l_seq, l.event_id AS l_event_id
    FROM folded AS f LEFT JOIN latest AS l ON l.job_id = f.id
),
changed AS (
    UPDATE async_status AS a
    SET status = n.status, message = n.message, end_time = n.end_time,
        terminal_at = n.t_at, terminal_seq = n.t_seq, terminal_event_id = n.t_event_id,
        message_at = n.l_at, message_seq = n.l_seq, message_event_id = n.l_event_id
    FROM next AS n
    WHERE a.id = n.id AND a.id = ANY(CAST(:ids AS bigint[]))
      AND (a.status, a.message, a.terminal_at, a.terminal_seq, a.terminal_event_id,
           a.message_at, a.message_seq, a.message_event_id)
          IS DISTINCT FROM (n.status, n.message, n.t_at, n.t_seq, n.t_event_id, n.l_at, n.l_seq, n.l_event_id)
    RETURNING a.id
)
SELECT count(*) FROM changed
""")


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
