"""The JobStore on PostgreSQL: a batch folded in two statements, the merge rule over sets (``merge.sql``)."""

from __future__ import annotations

import pathlib
import typing
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tracker import listing, timefmt
from tracker.events import Event
from tracker.model import Applied, Ended
from tracker.store.engine import refused_as_error, unavailable_as_error
from tracker.store.jobs import JobStore
from tracker.store.list_statement import matching_rows

MERGE_SQL = pathlib.Path(__file__).with_name("merge.sql")

# Set once on each pooled connection that folds batches, for its whole session: a round trip per
# batch is worth saving, as it is on the path of every event's latency. The planner prices the
# history lookup high enough to JIT-compile the merge, which takes longer than running it; on a
# table of some ten thousand rows it scans all of them rather than look a batch's rows up by
# primary key, and worse as the table grows; and re-planning the merge for every small batch
# costs more than the generic plan loses (docs/performance.md). No setting changes what any
# statement returns.
_PLAN_FOR_BATCHES = sa.text(
    "SELECT set_config('jit', 'off', false), set_config('enable_seqscan', 'off', false), "
    "set_config('plan_cache_mode', 'force_generic_plan', false)"
)
# The key, in the pooled DBAPI connection's ``info``, of the merge functions its session has made
# (the settings above come with the first). A new connection has a new ``info``.
_MADE_FOR_BATCHES = "tracker.store: merge functions of this session"

# Why the merge runs as a function of the session's own, made from merge.sql by the session's
# first fold and called by every batch with a statement of one line:
# - psycopg converts a query's text (finding its placeholders) and caches the result only for
#   texts of at most ``psycopg._queries.MAX_CACHED_STATEMENT_LENGTH`` (4,096) characters. The
#   merge, sent whole, was 17 characters from it and will grow: past it, psycopg would convert
#   it anew for every batch. Sent once per session, its length costs nothing per batch.
# - Not PREPARE and EXECUTE: EXECUTE is a utility statement and takes no bound parameters
#   ("there is no parameter $1"), so each batch's JSON would have to be quoted into its text.
# - Not a function made by a migration: each change of merge.sql would be frozen into a new
#   migration, and during a deploy a process could run a merge that is not its own code's.
# - PL/pgSQL: it keeps the plan of its statement for the session, as a prepared statement does
#   (``plan_cache_mode`` above applies to it), where PostgreSQL before 18 plans the body of an
#   SQL function afresh at every call. psycopg, after a few calls, prepares the call itself.
# - Made in the same transaction as the settings, so undone with them if that transaction fails.
# A session is one server connection: a pooler that gives each transaction any server connection
# (PgBouncer's transaction mode) would lose both (docs/scaling.md).
_FUNCTION_QUOTE = "$merge$"
# What merge.sql answers (its header says which rows). The names are the function's output
# parameters, which PL/pgSQL would take a column of the same name for: its body prefers the column.
_ANSWER = (
    "changed bigint, job_id bigint, kind text, status text, start_time timestamptz, end_time timestamptz, "
    "notifies boolean"
)
_UNDEFINED_FUNCTION = "42883"  # SQLSTATE undefined_function

# Locking in id order is what makes concurrent batches over the same jobs wait for each other
# instead of deadlocking. It answers with the ids that have no row (usually none), not with the
# rows it locked. It also marks the transaction as one whose writes of async_status log
# themselves in the stream's change log (merge.sql), so that migration 0015's row trigger, which
# logs every other writer's, leaves them alone.
_LOCK_SQL = """
WITH locked AS (
    SELECT id FROM async_status WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id FOR UPDATE
)
SELECT ARRAY(SELECT unnest(%(ids)s::bigint[]) EXCEPT ALL SELECT id FROM locked),
       set_config('tracker.logs_changes', 'on', true)
"""


def define_merge_function(name: str, statement: str) -> str:
    """The statement that makes ``pg_temp.<name>(json, bigint[])``, a function of the session's own
    that runs ``statement`` (``$1`` the batch's events, ``$2`` their job ids) and answers its rows,
    which are merge.sql's (``_ANSWER``).

    Raises ValueError if ``statement`` holds the quote the function's body is written between.
    """
    body = statement.strip().removesuffix(";")
    if _FUNCTION_QUOTE in body:
        raise ValueError(f"the statement holds {_FUNCTION_QUOTE}, which quotes the function's body")
    return (
        f"CREATE OR REPLACE FUNCTION pg_temp.{name}(json, bigint[]) RETURNS TABLE ({_ANSWER}) LANGUAGE plpgsql AS "
        f"{_FUNCTION_QUOTE} #variable_conflict use_column\nBEGIN RETURN QUERY\n{body};\nEND {_FUNCTION_QUOTE}"
    )


class PostgresJobStore(JobStore):
    """Folds each batch with one lock statement and one call of the merge function.

    A connection's first fold keeps JIT and sequential scans off, and prepared plans generic, for
    the rest of its session (``_PLAN_FOR_BATCHES``), and makes the session's merge function.
    """

    # The merge function's name and the statement it runs: one of each in the product. A subclass
    # may fold with another statement, under a name of its own.
    merge_name = "tracker_merge"
    merge_statement = MERGE_SQL.read_text(encoding="utf-8")

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._make_merge = define_merge_function(self.merge_name, self.merge_statement)
        self._merge_sql = f"SELECT * FROM pg_temp.{self.merge_name}(%(events)s::json, %(ids)s::bigint[])"

    def _count_beyond_cap(self, conn: sa.Connection, query: listing.JobQuery) -> listing.Count:
        # The planner's estimate of the matching rows, from the table's size and the statistics
        # that ANALYZE (autovacuum) keeps of its columns: no row is read.
        matching = matching_rows(query).compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {matching}", matching.params).scalar_one()
        return listing.summary_count(listing.COUNT_CAP + 1, int(plan[0]["Plan"]["Plan Rows"]))

    def apply(self, events: Sequence[Event]) -> Applied:
        with refused_as_error(), unavailable_as_error(), self._engine.connect() as conn:
            made: frozenset[str] = conn.connection.info.get(_MADE_FOR_BATCHES, frozenset())
            with conn.begin():
                if not made:
                    conn.execute(_PLAN_FOR_BATCHES)
                if self.merge_name not in made:
                    # Sent as it is: with no parameters, psycopg neither converts nor caches it.
                    conn.exec_driver_sql(self._make_merge, execution_options={"no_parameters": True})
                try:
                    applied = self._fold(conn, events)
                except sa.exc.ProgrammingError as exc:
                    if getattr(exc.orig, "sqlstate", None) == _UNDEFINED_FUNCTION:
                        # The session lost its function (DISCARD, a pooler in transaction mode):
                        # the next fold on this connection makes it again.
                        conn.connection.info.pop(_MADE_FOR_BATCHES, None)
                    raise
                # _fold has committed (the end of this block finds nothing left to commit).
            # Only now: had the transaction failed, the settings and the function would have been
            # undone with it.
            conn.connection.info[_MADE_FOR_BATCHES] = made | {self.merge_name}
            return applied

    def _fold(self, conn: sa.Connection, events: Sequence[Event]) -> Applied:
        """Lock the batch's rows, merge, and commit: three statements sent at once (psycopg's
        pipeline mode), their answers read after the commit's.

        One round trip rather than three, and no wait on this process between the merge and its
        commit: the merge takes the stream's lock (merge.sql, ``serialized``), which every other
        writer's commit waits for until this one's is done. Had the commit waited for this thread
        to read the merge's answer first, it would have waited for the interpreter's lock too,
        which the connection's thread holds for milliseconds at a time (docs/performance.md).
        """
        # The ids travel as one array literal: psycopg adapts a list of ints one by one.
        ids = "{" + ",".join(map(str, sorted({event.job_id for event in events}))) + "}"
        # The events go as one JSON text, which PostgreSQL reads back exactly (µs, with offset):
        # cheaper than the driver adapting parameters one by one. orjson writes an Event (a
        # dataclass) as an object of its fields, which the merge reads by name.
        batch = orjson.dumps(list(events)).decode()
        raw = typing.cast("psycopg.Connection[Any]", conn.connection.driver_connection)
        try:
            with raw.pipeline(), raw.cursor() as locking, raw.cursor() as merging:
                locking.execute(_LOCK_SQL, {"ids": ids})
                # A new statement, so a new snapshot: it sees everything committed by whoever held
                # these locks before us, message history included.
                merging.execute(self._merge_sql, {"events": batch, "ids": ids})
                raw.commit()
                missing = typing.cast("tuple[list[int]]", locking.fetchone())[0]
                rows = merging.fetchall()
        except psycopg.Error as exc:
            # Handled as SQLAlchemy handles its own statements' errors (the engine's error hook,
            # a lost connection dropped from the pool), raised as its DBAPIError. (In a pipeline
            # the error of any of the three surfaces at the commit.)
            conn._handle_dbapi_exception(exc, self._merge_sql, {}, None, None)  # noqa: SLF001
        changed, ended, queued = 0, [], []
        for row in rows:
            if row[1] is None:
                changed = row[0]
            else:
                job_id, kind, status, start, end, notifies = row[1:]
                ended.append(Ended(job_id, kind, status, start.astimezone(timefmt.UTC), end.astimezone(timefmt.UTC)))
                if notifies:
                    queued.append(job_id)
        ended.sort(key=lambda job: job.job_id)
        return Applied(
            changed_jobs=changed,
            missing_jobs=frozenset(missing),
            ended=tuple(ended),
            queued_deliveries=tuple(sorted(queued)),
        )
