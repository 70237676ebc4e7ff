"""The store's statements as they are built: the merge function made from merge.sql, the statements
of each batch short enough for psycopg's cache, the list's statement, the benchmark's variants."""

import difflib

import psycopg._queries
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect

from bench.store_variants import HistoryOnly, WithoutReceipts, history_only, without_receipts
from tracker.store import list_statement, postgresql

MERGE = postgresql.MERGE_SQL.read_text(encoding="utf-8")


def test_the_merge_function_runs_merge_sql_as_it_is() -> None:
    made = postgresql.define_merge_function("tracker_merge", MERGE)
    assert made.startswith("CREATE OR REPLACE FUNCTION pg_temp.tracker_merge(json, bigint[])")
    assert MERGE.strip() in made


def test_a_statement_holding_the_functions_quote_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\$merge\$"):
        postgresql.define_merge_function("tracker_merge", "SELECT '$merge$'")


def test_the_statements_of_each_batch_fit_psycopgs_cache_of_converted_queries() -> None:
    # Over the limit, psycopg splits the text with a regular expression on every batch; the merge
    # itself goes once per session (tests/integration/test_store_sessions.py sees what is sent).
    store = postgresql.PostgresJobStore(sa.create_engine("postgresql+psycopg://"))  # connects to nothing
    for statement in (postgresql._LOCK_SQL, store._merge_sql):  # noqa: SLF001
        assert len(statement.encode()) <= psycopg._queries.MAX_CACHED_STATEMENT_LENGTH  # noqa: SLF001


def test_the_merge_renews_a_lease_with_the_slack_the_lost_job_check_allows() -> None:
    # The check waits RENEW_SLACK_S past a recorded expiry because the fold may leave one that
    # much early; the statement must skip no more than that.
    from tracker.leases import RENEW_SLACK_S

    assert f"(l.heartbeat_timeout_s - {RENEW_SLACK_S}) * interval '1 s'" in MERGE


@pytest.mark.parametrize("dialect", [pg_dialect.psycopg.dialect(), sa.dialects.sqlite.dialect()])
def test_the_lists_statement_names_each_status_as_the_partial_indexes_need(dialect: sa.Dialect) -> None:
    # Migration 0006's indexes hold finished rows only (status <> 'PENDING'): a plan can read them
    # only if it knows the status it looks for, generic plans included, and SQLite only if the
    # statement repeats their condition word for word.
    from tracker.listing import JobFilter, JobQuery

    statement, _ = list_statement.page_of(JobQuery(JobFilter(statuses=("FAILED", "PENDING"))))
    sent = str(statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}))
    assert "async_status.status != 'PENDING'" in sent
    assert "async_status.status = 'PENDING'" in sent
    assert "SUCCEEDED" not in sent


# ---- the benchmark's A/B sides (bench/store_variants.py): the merge less exactly one part


def _changes(before: str, after: str) -> list[tuple[str, list[str], list[str]]]:
    """What turns ``before`` into ``after``, line by line: (how, its lines before, its lines after)."""
    old, new = before.splitlines(), after.splitlines()
    opcodes = difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes()
    return [(how, old[i1:i2], new[j1:j2]) for how, i1, i2, j1, j2 in opcodes if how != "equal"]


def test_without_receipts_drops_the_lease_writes_and_nothing_else() -> None:
    [(how, removed, _)] = _changes(MERGE, WithoutReceipts.merge_statement)
    code = [line for line in removed if not line.startswith("--")]
    assert (how, code[0], code[-1]) == ("delete", "renewed AS (", "),")
    assert "ended AS (" in code
    assert "async_status_lease" not in WithoutReceipts.merge_statement


def test_history_only_changes_the_timelines_rows_alone() -> None:
    [(how, removed, added)] = _changes(WithoutReceipts.merge_statement, HistoryOnly.merge_statement)
    timeline_rows = "FROM batch AS b JOIN job AS j ON j.id = b.job_id"
    assert (how, [line.strip() for line in removed]) == ("replace", [timeline_rows])
    assert len(added) == 1 and "b.message IS NOT NULL" in added[0]


def test_each_variant_folds_under_a_function_name_of_its_own() -> None:
    names = {postgresql.PostgresJobStore.merge_name, WithoutReceipts.merge_name, HistoryOnly.merge_name}
    assert len(names) == 3


def test_a_merge_whose_parts_moved_is_refused_rather_than_varied_wrongly() -> None:
    with pytest.raises(ValueError, match="renewed"):
        without_receipts(MERGE.replace("renewed AS (", "renewed AS  ("))
    with pytest.raises(ValueError, match="timeline's rows"):
        history_only(MERGE.replace("JOIN job AS j", "JOIN job j"))
