"""The JobStore on PostgreSQL: a batch folded in two statements, the merge rule over sets (``merge.sql``)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tracker import listing
from tracker.events import Event
from tracker.model import Applied
from tracker.store.engine import refused_as_error, unavailable_as_error
from tracker.store.jobs import JobStore
from tracker.store.list_statement import matching_rows

# Set once on each pooled connection that folds batches, for its whole session: a round trip per
# batch is worth saving, as it is on the path of every event's latency. The planner prices the
# history lookup high enough to JIT-compile the merge, which takes longer than running it; on a
# table of some ten thousand rows it scans all of them rather than look a batch's rows up by
# primary key, and worse as the table grows; and re-planning the prepared merge for every small
# batch costs more than the generic plan loses (docs/performance.md). No setting changes what any
# statement returns.
_PLAN_FOR_BATCHES = sa.text(
    "SELECT set_config('jit', 'off', false), set_config('enable_seqscan', 'off', false), "
    "set_config('plan_cache_mode', 'force_generic_plan', false)"
)
# The key, in the pooled DBAPI connection's ``info``, that says its session has those settings.
_PLANNED_FOR_BATCHES = "tracker.store: planned for batches"

# Locking in id order is what makes concurrent batches over the same jobs wait for each other
# instead of deadlocking. It answers with the ids that have no row (usually none), not with the
# rows it locked.
_LOCK = sa.text("""
WITH locked AS (
    SELECT id FROM async_status WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id FOR UPDATE
)
SELECT ARRAY(SELECT unnest(CAST(:ids AS bigint[])) EXCEPT ALL SELECT id FROM locked)
""")


def compact(sql: str) -> sa.TextClause:
    """The statement without its comment lines and with each run of white space made one space.

    psycopg converts and caches a query's text only up to 4,096 characters
    (``psycopg._queries.MAX_CACHED_STATEMENT_LENGTH``); a longer one is split afresh on every
    execution. Only for statements whose literals hold no runs of white space; a comment must
    have its own line (on one line, a comment after code would swallow the rest of the statement).
    Raises ValueError for a comment after code.
    """
    lines = (line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    compacted = " ".join(" ".join(lines).split())
    if "--" in compacted:
        raise ValueError("a comment after code on the same line: give it a line of its own")
    return sa.text(compacted)


def without_receipts(sql: str) -> str:
    """The merge without the lines from ``-- receipts: begin`` to ``-- receipts: end`` (its lease writes)."""
    lines = sql.splitlines()
    begin = next(n for n, line in enumerate(lines) if line.startswith("-- receipts: begin"))
    end = next(n for n, line in enumerate(lines) if line.startswith("-- receipts: end"))
    return "\n".join(lines[:begin] + lines[end + 1 :])


# The timeline's source rows in merge.sql, and what a fold that keeps only the history puts there
# instead: the message events inside R (merge.to_remember), as the store kept before the timeline.
_TIMELINE_ROWS = "FROM batch AS b JOIN job AS j ON j.id = b.job_id"
_HISTORY_ROWS = (
    "FROM batch AS b JOIN folded AS f ON f.id = b.job_id WHERE b.message IS NOT NULL "
    "AND (f.t_at IS NULL OR (b.occurred_at, b.seq, b.event_id) <= (f.t_at, f.t_seq, f.t_event_id))"
)


def history_only(sql: str) -> str:
    """The merge keeping only the events the merge may need again instead of the whole timeline."""
    if sql.count(_TIMELINE_ROWS) != 1:
        raise ValueError("the merge names the timeline's rows other than once")
    return sql.replace(_TIMELINE_ROWS, _HISTORY_ROWS)


def _without_parts(sql: str, receipts: bool, timeline: bool) -> str:
    sql = sql if receipts else without_receipts(sql)
    return sql if timeline else history_only(sql)


MERGE_SQL = pathlib.Path(__file__).with_name("merge.sql")
_MERGE = compact(MERGE_SQL.read_text(encoding="utf-8"))
# For the benchmark's A/Bs only, by (record_receipts, keep_timeline); (True, True) is ``_MERGE``.
# Of the variants, (True, False) is longer than psycopg's cache of converted queries holds, so the
# A/B of the timeline runs both its sides without receipts (bench/receipts.py).
_MERGE_VARIANTS = {
    (receipts, timeline): compact(_without_parts(MERGE_SQL.read_text(encoding="utf-8"), receipts, timeline))
    for receipts in (True, False)
    for timeline in (True, False)
}


class PostgresJobStore(JobStore):
    """Folds each batch with one lock statement and one merge statement.

    A connection that has folded a batch keeps JIT and sequential scans off, and prepared plans
    generic, for the rest of its session (``_PLAN_FOR_BATCHES``).
    """

    def __init__(self, engine: Engine, *, record_receipts: bool = True, keep_timeline: bool = True) -> None:
        super().__init__(engine, record_receipts=record_receipts, keep_timeline=keep_timeline)
        self._merge = _MERGE_VARIANTS[record_receipts, keep_timeline]

    def _count_beyond_cap(self, conn: sa.Connection, query: listing.JobQuery) -> listing.Count:
        # The planner's estimate of the matching rows, from the table's size and the statistics
        # that ANALYZE (autovacuum) keeps of its columns: no row is read.
        matching = matching_rows(query).compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {matching}", matching.params).scalar_one()
        return listing.summary_count(listing.COUNT_CAP + 1, int(plan[0]["Plan"]["Plan Rows"]))

    def apply(self, events: Sequence[Event]) -> Applied:
        with refused_as_error(), unavailable_as_error(), self._engine.connect() as conn:
            planned = conn.connection.info.get(_PLANNED_FOR_BATCHES, False)
            with conn.begin():
                if not planned:
                    conn.execute(_PLAN_FOR_BATCHES)
                applied = _fold(conn, events, self._merge)
            # Only now: had the transaction failed, the settings would have been undone with it.
            conn.connection.info[_PLANNED_FOR_BATCHES] = True
            return applied


def _fold(conn: sa.Connection, events: Sequence[Event], merge: sa.TextClause) -> Applied:
    # The ids travel as one array literal: psycopg adapts a list of ints one by one.
    ids = "{" + ",".join(map(str, sorted({event.job_id for event in events}))) + "}"
    missing = conn.execute(_LOCK, {"ids": ids}).scalar_one()
    # The events go as one JSON text, which PostgreSQL reads back exactly (µs, with offset):
    # cheaper than the driver adapting parameters one by one. orjson writes an Event (a
    # dataclass) as an object of its fields, which the merge reads by name.
    batch = orjson.dumps(list(events)).decode()
    # A new statement, so a new snapshot: it sees everything committed by whoever held these
    # locks before us, message history included.
    changed = conn.execute(merge, {"events": batch, "ids": ids}).scalar_one()
    return Applied(changed_jobs=changed, missing_jobs=frozenset(missing))
