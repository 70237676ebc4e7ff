"""The benchmark's A/B sides of the store: the product's PostgreSQL store, its merge statement less one part."""

from __future__ import annotations

from tracker.store.postgresql import PostgresJobStore

# The timeline's source rows in merge.sql, and what a fold that keeps only the history puts there
# instead: the message and progress events inside R (merge.to_remember), as the store kept the
# message events before the timeline.
_TIMELINE_ROWS = "FROM batch AS b JOIN job AS j ON j.id = b.job_id"
_HISTORY_ROWS = (
    "FROM batch AS b JOIN folded AS f ON f.id = b.job_id WHERE (b.message IS NOT NULL OR b.progress IS NOT NULL) "
    "AND (f.t_at IS NULL OR (b.occurred_at, b.seq, b.event_id) <= (f.t_at, f.t_seq, f.t_event_id))"
)


def without_receipts(statement: str) -> str:
    """The merge without its lease writes (its ``renewed`` and ``ended`` parts); raises ValueError
    if it has no such parts."""
    return _without_part(_without_part(statement, "renewed"), "ended")


def history_only(statement: str) -> str:
    """The merge keeping only the events the merge may need again instead of the whole timeline;
    raises ValueError if it names the timeline's rows other than once."""
    if statement.count(_TIMELINE_ROWS) != 1:
        raise ValueError("the merge names the timeline's rows other than once")
    return statement.replace(_TIMELINE_ROWS, _HISTORY_ROWS)


def _without_part(statement: str, name: str) -> str:
    """``statement`` without the part of its WITH named ``name``: from its line ``name AS (`` (and
    the comment lines right above it) to the first line ``),`` after it."""
    lines = statement.splitlines()
    try:
        begin = lines.index(f"{name} AS (")
        end = lines.index("),", begin)
    except ValueError:
        raise ValueError(f"the merge has no part {name!r} written as `{name} AS (` … `),`") from None
    while begin > 0 and lines[begin - 1].startswith("--"):
        begin -= 1
    return "\n".join(lines[:begin] + lines[end + 1 :])


class WithoutReceipts(PostgresJobStore):
    """Folds as the product does, but renews and deletes no heartbeat lease (#6's "off" side)."""

    merge_name = "bench_merge_without_receipts"
    merge_statement = without_receipts(PostgresJobStore.merge_statement)


class HistoryOnly(WithoutReceipts):
    """Folds as ``WithoutReceipts`` does, but keeps in async_status_event only the message (and
    progress) events inside R, as the store did before the timeline (#1d's "off" side; both its sides run without
    receipts)."""

    merge_name = "bench_merge_history_only"
    merge_statement = history_only(WithoutReceipts.merge_statement)


def without_cursor(statement: str) -> str:
    """The merge without SPEC §13's change log (its ``serialized`` and ``logged`` parts); raises
    ValueError if it has no such parts."""
    return _without_part(_without_part(statement, "serialized"), "logged")


class WithoutCursor(PostgresJobStore):
    """Folds as the product does, but logs no change for the stream and takes no cursor (the "off"
    side of bench.cursor_cost)."""

    merge_name = "bench_merge_without_cursor"
    merge_statement = without_cursor(PostgresJobStore.merge_statement)
