"""The PostgreSQL fold's statements as they are sent: compacted, and short enough for psycopg's cache."""

import psycopg._queries
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect

from tracker.store import postgresql


def _as_sent(clause: sa.TextClause) -> str:
    return str(clause.compile(dialect=pg_dialect.psycopg.dialect()))


def test_the_merge_fits_psycopgs_cache_of_converted_queries():
    # Over the limit, psycopg splits the 4 kB text with a regular expression on every batch.

    assert len(_as_sent(postgresql._MERGE)) <= psycopg._queries.MAX_CACHED_STATEMENT_LENGTH  # noqa: SLF001


def test_compacting_drops_comment_lines_and_runs_of_white_space():
    clause = postgresql.compact("""
        -- a comment of its own
        SELECT a,
               b   FROM t
          -- another
        WHERE a = 'x'
    """)
    assert clause.text == "SELECT a, b FROM t WHERE a = 'x'"


def test_a_comment_after_code_is_refused_rather_than_swallowing_the_rest():
    with pytest.raises(ValueError, match="line of its own"):
        postgresql.compact("SELECT a -- why\nFROM t")


def test_the_merge_renews_a_lease_with_the_slack_the_lost_job_check_allows():
    # The check waits RENEW_SLACK_S past a recorded expiry because the fold may leave one that
    # much early; the statement must skip no more than that.
    from tracker.leases import RENEW_SLACK_S

    text = postgresql.MERGE_SQL.read_text()
    assert f"(l.heartbeat_timeout_s - {RENEW_SLACK_S}) * interval '1 s'" in text


@pytest.mark.parametrize("dialect", [pg_dialect.psycopg.dialect(), sa.dialects.sqlite.dialect()])
def test_the_lists_statement_names_each_status_as_the_partial_indexes_need(dialect: sa.Dialect) -> None:
    # Migration 0006's indexes hold finished rows only (status <> 'PENDING'): a plan can read them
    # only if it knows the status it looks for, generic plans included, and SQLite only if the
    # statement repeats their condition word for word.
    from tracker.listing import JobQuery
    from tracker.store.list_statement import page_of

    statement, _ = page_of(JobQuery(statuses=("FAILED", "PENDING")))
    sent = str(statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}))
    assert "async_status.status = 'FAILED' AND async_status.status != 'PENDING'" in sent
    assert "async_status.status = 'PENDING'" in sent
    assert "SUCCEEDED" not in sent
