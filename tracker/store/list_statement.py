"""The statement of one page of the job list and of its capped count, built from a ``listing.JobQuery``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from tracker import listing, merge
from tracker.store.tables import PUBLIC_COLUMNS, UTCDateTime, async_status

# What a filter's time is replaced by in a statement's key (``_shape_of``): its value is a parameter.
_SHAPE_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def page_of(query: listing.JobQuery) -> tuple[sa.Select[Any], dict[str, Any]]:
    """The statement that reads ``query``'s page and its capped count (``_page_statement``), cached by
    the query's shape, and the parameters that run it for this query."""
    return _page_statement(_shape_of(query)), _window_of(query)


def _shape_of(query: listing.JobQuery) -> listing.JobQuery:
    """``query`` without the values that travel as parameters (``_window_of``): its statement's key."""
    return dataclasses.replace(
        query,
        where=filter_shape(query.where),
        limit=1,
        offset=0,
        id_below=None if query.id_below is None else 0,
        id_above=None if query.id_above is None else 0,
    )


def filter_shape(where: listing.JobFilter) -> listing.JobFilter:
    """``where`` without the values that travel as parameters (``filter_parameters``): the key of a
    statement that ``filter_conditions`` builds."""
    return dataclasses.replace(
        where,
        kinds=("",) if where.kinds else (),
        labels=tuple(listing.LabelMatch(str(n), None if m.value is None else "") for n, m in enumerate(where.labels)),
        error_codes=("",) if where.error_codes else (),
        started_after=None if where.started_after is None else _SHAPE_TIME,
        started_before=None if where.started_before is None else _SHAPE_TIME,
    )


def filter_parameters(where: listing.JobFilter) -> dict[str, Any]:
    """The parameters of the conditions ``filter_conditions`` builds for ``filter_shape(where)``."""
    parameters: dict[str, Any] = {}
    if where.kinds:
        parameters["kinds"] = list(where.kinds)
    if where.error_codes:
        parameters["error_codes"] = list(where.error_codes)
    for n, match in enumerate(where.labels):
        parameters[f"label_key_{n}"] = match.key
        if match.value is not None:
            parameters[f"label_value_{n}"] = match.value
    if where.started_after is not None:
        parameters["started_after"] = where.started_after
    if where.started_before is not None:
        parameters["started_before"] = where.started_before
    return parameters


def _window_of(query: listing.JobQuery) -> dict[str, Any]:
    """The parameters of ``query``'s statement."""
    window: dict[str, Any] = {
        "reach": query.reach,
        "limit": query.limit,
        "offset": query.offset,
        "count_cap": listing.COUNT_CAP + 1,
    }
    if query.id_below is not None:
        window["id_below"] = query.id_below
    if query.id_above is not None:
        window["id_above"] = query.id_above
    return window | filter_parameters(query.where)


# Building the statement costs more than PostgreSQL takes to run it; there are a few hundred shapes.
@functools.lru_cache(maxsize=512)
def _page_statement(query: listing.JobQuery) -> sa.Select[Any]:
    """``matching`` (the rows matching ``query``'s filters, counted up to COUNT_CAP + 1 per status),
    then the public columns of the page's rows in order; a single row of ``matching`` and NULLs if none.

    The page: per kept status, the first ``reach`` rows in order, merged. NULL end times (PENDING
    jobs) count as later than any time: last ascending, first descending. Ties are broken by id,
    in the same direction.
    """

    def ordering(
        columns: sa.ColumnCollection[str, sa.ColumnElement[Any]], key: str = query.order_by
    ) -> list[sa.ColumnElement[Any]]:
        keys = [columns[key], columns["id"]] if key != "id" else [columns["id"]]
        ordered: list[sa.ColumnElement[Any]] = [column.desc() if query.descending else column.asc() for column in keys]
        if key == "end_time":
            first = ordered[0]
            ordered[0] = first.nulls_first() if query.descending else first.nulls_last()
        return ordered

    reach = sa.bindparam("reach", query.reach, type_=sa.BigInteger)
    ranges = []
    for status in query.kept_statuses:
        key = _range_key(status, query.order_by)
        if query.where.error_codes:
            # Only FAILED jobs carry an error code (the merge rule: t's error, on failed events
            # only), so its rows are kept by the code alone: a range of 0013's (error_code, id)
            # index. With the status too, the planner would AND a bitmap of every FAILED job.
            rows = (
                sa.select(*PUBLIC_COLUMNS)
                .where(*_id_bounds(query), *filter_conditions(query.where))
                .order_by(*ordering(async_status.c, key))
                .limit(reach)
            )
        elif status != merge.PENDING and key == "id" and query.where.started_after is not None:
            # The jobs started since a time, by id: ids follow start times, which the planner does
            # not know; taking the matches to be spread evenly, it would walk the ids from the
            # newest through every job of the status when few started in the window. So the window
            # is read as a range of 0006's (status, start_time, id) index, its ids sorted, and the
            # rows that make the cut read by id: the cost of the jobs started in the window.
            started = (
                sa.select(async_status.c.id)
                .where(*_kept(status), *_id_bounds(query), *filter_conditions(query.where))
                .offset(0)
                .subquery()
            )
            first = sa.select(started.c.id).order_by(*ordering(started.c, key)).limit(reach)
            rows = sa.select(*PUBLIC_COLUMNS).where(async_status.c.id.in_(first))
        elif status == merge.PENDING and key != "id":
            # Every running job, then sorted: through 0004's index of PENDING rows, never the primary
            # key, which the planner, taking PENDING rows to be spread evenly, would walk from the
            # oldest job to the running ones. A subquery with an OFFSET is planned on its own. Only
            # the ids and the key are sorted; the rows that make the cut are read by id. (By id,
            # the rows are a range of 0013's index of PENDING ids: the branch below.)
            running = (
                sa.select(*dict.fromkeys((async_status.c.id, async_status.c[key])))
                .where(*_kept(status), *_id_bounds(query), *filter_conditions(query.where))
                .offset(0)
                .subquery()
            )
            first = sa.select(running.c.id).order_by(*ordering(running.c, key)).limit(reach)
            rows = sa.select(*PUBLIC_COLUMNS).where(async_status.c.id.in_(first))
        elif status == merge.PENDING:
            rows = (
                sa.select(*PUBLIC_COLUMNS)
                .where(*_kept(status), *_id_bounds(query), *filter_conditions(query.where))
                .order_by(*ordering(async_status.c, key))
                .limit(reach)
            )
        else:
            # In the order of a finished-rows index, status first: a status kept as a range of one
            # value is not a constant to the planner, so only those indexes give this order. Kept
            # by "status = …", the primary key gives ``id`` order too, and the planner, taking the
            # status's rows to be spread evenly, walks it from the newest job, through every
            # running job (50,000 on a busy system) before the first finished one.
            by_status = async_status.c.status.desc() if query.descending else async_status.c.status.asc()
            rows = (
                sa.select(*PUBLIC_COLUMNS)
                .where(*_kept_as_range(status), *_id_bounds(query), *filter_conditions(query.where))
                .order_by(by_status, *ordering(async_status.c, key))
                .limit(reach)
            )
        ranges.append(rows.subquery())
    merged = sa.union_all(*(sa.select(*r.c) for r in ranges)).subquery()
    page = (
        sa.select(*merged.c)
        .order_by(*ordering(merged.c))
        .limit(sa.bindparam("limit", query.limit, type_=sa.BigInteger))
        .offset(sa.bindparam("offset", query.offset, type_=sa.BigInteger))
        .subquery()
    )
    cap = sa.bindparam("count_cap", listing.COUNT_CAP + 1, type_=sa.BigInteger)
    if query.where.labels and query.where.started_after is None and query.kept_statuses == listing.STATUSES:
        # Every status: one walk of the newest jobs (the primary key), not one per status.
        conditions = [*_id_bounds(query), *filter_conditions(query.where)]
        every_job = sa.select(sa.literal(1)).select_from(async_status).where(*conditions)
        capped = [every_job.order_by(async_status.c.id.desc()).limit(cap)]
    else:
        capped = [_capped(query, status, cap) for status in query.kept_statuses]
    every = sa.union_all(*(sa.select(*c.subquery().c) for c in capped)).subquery()
    counted = sa.select(sa.func.count().label("matching")).select_from(every).subquery()
    return (
        sa.select(counted.c.matching, *page.c)
        .select_from(counted.outerjoin(page, sa.true()))
        .order_by(*ordering(page.c))
    )


def _kept(status: str) -> list[sa.ColumnElement[bool]]:
    """The conditions that keep the rows of one status, as migration 0006's partial indexes need them.

    The status is written into the statement (it is one of three constants), so that the planner
    knows which partial index holds its rows in every plan, generic ones too; a finished status
    also repeats the indexes' own condition, which SQLite needs word for word to use them.
    """
    kept = [async_status.c.status == sa.literal(status, literal_execute=True)]
    if status != merge.PENDING:
        kept.append(async_status.c.status != sa.literal(merge.PENDING, literal_execute=True))
    return kept


def _capped(query: listing.JobQuery, status: str, cap: sa.BindParameter[int]) -> sa.Select[Any]:
    """A row for each of the first ``cap`` jobs of ``status`` matching ``query``'s filters.

    A label has no index: its jobs are counted newest first in an index's order (of the status's
    ids, as the page reads them), which stops at the cap after a few thousand rows for a common
    label; unordered, the planner reads every job of a small status (a bitmap of 100,000 FAILED
    jobs to count those with ``env=prod``). Not with ``startedAfter``, whose window is read from
    the start_time index: in id order, a window holding none of the status's jobs is a walk of all.
    """
    conditions = [*_id_bounds(query), *filter_conditions(query.where)]
    if query.where.error_codes:  # FAILED jobs alone carry one: the error code's index, unmixed
        return sa.select(sa.literal(1)).select_from(async_status).where(*conditions).limit(cap)
    if status == merge.PENDING:  # newest first: a window of recent starts is met at once
        kept_pending = sa.select(sa.literal(1)).select_from(async_status).where(*_kept(status), *conditions)
        return kept_pending.order_by(async_status.c.id.desc()).limit(cap)
    if not query.where.labels or query.where.started_after is not None:
        return sa.select(sa.literal(1)).select_from(async_status).where(*_kept(status), *conditions).limit(cap)
    kept = _kept_as_range(status)
    return (
        sa.select(sa.literal(1))
        .select_from(async_status)
        .where(*kept, *conditions)
        .order_by(async_status.c.status.desc(), async_status.c.id.desc())
        .limit(cap)
    )


def _kept_as_range(status: str) -> list[sa.ColumnElement[bool]]:
    """The rows of one finished status, kept as the range from it to it (``_kept`` otherwise)."""
    value = sa.literal(status, literal_execute=True)
    pending = sa.literal(merge.PENDING, literal_execute=True)
    return [async_status.c.status >= value, async_status.c.status <= value, async_status.c.status != pending]


def _range_key(status: str, order_by: str) -> str:
    """The key one status's rows are read in for a list ordered by ``order_by``.

    Within one status, ordering by status is ordering by id; and a PENDING job's end_time is
    always NULL (the merge rule sets it with the terminal event), so its rows by end_time are its
    rows by id. PENDING rows by id are a range of 0013's partial index; in another order they
    (running jobs, few) are all read, through 0004's partial index of PENDING rows, and sorted.
    """
    if order_by == "status" or (status == merge.PENDING and order_by == "end_time"):
        return "id"
    return order_by


def matching_rows(query: listing.JobQuery) -> sa.Select[Any]:
    """A row for each job matching ``query``'s filters, whatever its page (their values bound in it)."""
    return sa.select(sa.literal(1)).select_from(async_status).where(*filters_of(query))


def filters_of(query: listing.JobQuery) -> list[sa.ColumnElement[bool]]:
    """The conditions a row of async_status meets when it matches ``query``'s filters (its ids,
    statuses and ``filter_conditions``), whatever its page (SPEC §13's streams use them alone)."""
    filters = _id_bounds(query)
    if query.kept_statuses != listing.STATUSES:
        filters.append(async_status.c.status.in_(query.kept_statuses))
    return filters + filter_conditions(query.where)


def filter_conditions(where: listing.JobFilter) -> list[sa.ColumnElement[bool]]:
    """The conditions, beyond the status, that keep the jobs ``where`` chooses, with their values as
    named parameters (``filter_parameters`` gives them for another filter of the same shape), so
    that one statement serves every value.

    A kind or error code is an ``IN`` of an expanding parameter; a label is matched by
    ``HasLabel``; the start time is at or after ``started_after``, strictly before ``started_before``.
    """
    conditions: list[sa.ColumnElement[bool]] = []
    # "IS NOT NULL" said outright: SQLite uses a partial index only when the query repeats its
    # condition (0013's kind and error_code indexes); PostgreSQL would infer it from the IN.
    if where.kinds:
        conditions.append(async_status.c.kind.is_not(None))
        conditions.append(
            async_status.c.kind.in_(sa.bindparam("kinds", list(where.kinds), expanding=True, type_=sa.Text))
        )
    if where.error_codes:
        conditions.append(async_status.c.error_code.is_not(None))
        conditions.append(
            async_status.c.error_code.in_(
                sa.bindparam("error_codes", list(where.error_codes), expanding=True, type_=sa.Text)
            )
        )
    for n, match in enumerate(where.labels):
        key = sa.bindparam(f"label_key_{n}", match.key, type_=sa.Text)
        if match.value is None:
            conditions.append(HasLabel(async_status.c.labels, key))
        else:
            conditions.append(
                HasLabel(async_status.c.labels, key, sa.bindparam(f"label_value_{n}", match.value, type_=sa.Text))
            )
    if where.started_after is not None:
        after = sa.bindparam("started_after", where.started_after, type_=UTCDateTime)
        conditions.append(async_status.c.start_time >= after)
    if where.started_before is not None:
        before = sa.bindparam("started_before", where.started_before, type_=UTCDateTime)
        conditions.append(async_status.c.start_time < before)
    return conditions


class HasLabel(FunctionElement[bool]):
    """``has_label(labels, key[, value])``: the job's labels hold ``key`` (with ``value``), in each
    dialect's own terms: on PostgreSQL JSONB's operators (``?``, ``@>``),
    on SQLite ``json_extract`` (keys hold no quote: ``labels.check_labels``)."""

    type = sa.Boolean()
    inherit_cache = True
    name = "has_label"


@compiles(HasLabel, "postgresql")
def _has_label_postgresql(element: HasLabel, compiler: SQLCompiler, **kw: Any) -> str:
    column, key, *value = (compiler.process(clause, **kw) for clause in element.clauses)
    if not value:
        return f"({column} ? CAST({key} AS text))"
    return f"({column} @> jsonb_build_object(CAST({key} AS text), CAST({value[0]} AS text)))"


@compiles(HasLabel, "sqlite")
def _has_label_sqlite(element: HasLabel, compiler: SQLCompiler, **kw: Any) -> str:
    column, key, *value = (compiler.process(clause, **kw) for clause in element.clauses)
    path = f"""('$."' || {key} || '"')"""
    if not value:
        return f"(json_type({column}, {path}) IS NOT NULL)"
    return f"(json_extract({column}, {path}) = {value[0]})"


def _id_bounds(query: listing.JobQuery) -> list[sa.ColumnElement[bool]]:
    """``query``'s conditions on the id: strictly below ``id_below``, strictly above ``id_above``."""
    bounds = []
    if query.id_below is not None:
        bounds.append(async_status.c.id < sa.bindparam("id_below", query.id_below, type_=sa.BigInteger))
    if query.id_above is not None:
        bounds.append(async_status.c.id > sa.bindparam("id_above", query.id_above, type_=sa.BigInteger))
    return bounds
