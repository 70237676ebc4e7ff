"""The statement of one page of the job list and of its capped count, built from a ``listing.JobQuery``."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import sqlalchemy as sa

from tracker import listing, merge
from tracker.store.tables import PUBLIC_COLUMNS, async_status


def page_of(query: listing.JobQuery) -> tuple[sa.Select[Any], dict[str, int]]:
    """The statement that reads ``query``'s page and its capped count (``_page_statement``), cached by
    the query's shape, and the parameters that run it for this query."""
    return _page_statement(_shape_of(query)), _window_of(query)


def _shape_of(query: listing.JobQuery) -> listing.JobQuery:
    """``query`` without the values that travel as parameters (``_window_of``): its statement's key."""
    return dataclasses.replace(
        query,
        limit=1,
        offset=0,
        id_below=None if query.id_below is None else 0,
        id_above=None if query.id_above is None else 0,
    )


def _window_of(query: listing.JobQuery) -> dict[str, int]:
    """The parameters of ``query``'s statement."""
    window = {"reach": query.reach, "limit": query.limit, "offset": query.offset, "count_cap": listing.COUNT_CAP + 1}
    if query.id_below is not None:
        window["id_below"] = query.id_below
    if query.id_above is not None:
        window["id_above"] = query.id_above
    return window


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
        if status == merge.PENDING:
            # Every running job, then sorted: through 0004's index of PENDING rows, never the primary
            # key, which the planner, taking PENDING rows to be spread evenly, would walk from the
            # oldest job to the running ones. A subquery with an OFFSET is planned on its own. Only
            # the ids and the key are sorted; the rows that make the cut are read by id.
            running = (
                sa.select(*dict.fromkeys((async_status.c.id, async_status.c[key])))
                .where(*_kept(status), *_id_bounds(query))
                .offset(0)
                .subquery()
            )
            first = sa.select(running.c.id).order_by(*ordering(running.c, key)).limit(reach)
            rows = sa.select(*PUBLIC_COLUMNS).where(async_status.c.id.in_(first))
        else:
            rows = (
                sa.select(*PUBLIC_COLUMNS)
                .where(*_kept(status), *_id_bounds(query))
                .order_by(*ordering(async_status.c, key))
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
    capped = [
        sa.select(sa.literal(1)).select_from(async_status).where(*_kept(status), *_id_bounds(query)).limit(cap)
        for status in query.kept_statuses
    ]
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


def _range_key(status: str, order_by: str) -> str:
    """The key one status's rows are read in for a list ordered by ``order_by``.

    Within one status, ordering by status is ordering by id; and a PENDING job's end_time is
    always NULL (the merge rule sets it with the terminal event), so its rows by end_time are its
    rows by id. PENDING rows are few (running jobs) and in no index of 0006: they are all read,
    through 0004's partial index of PENDING rows, and sorted.
    """
    if order_by == "status" or (status == merge.PENDING and order_by == "end_time"):
        return "id"
    return order_by


def matching_rows(query: listing.JobQuery) -> sa.Select[Any]:
    """A row for each job matching ``query``'s filters, whatever its page."""
    return sa.select(sa.literal(1)).select_from(async_status).where(*filters_of(query))


def filters_of(query: listing.JobQuery) -> list[sa.ColumnElement[bool]]:
    """The conditions a row of async_status meets when it matches ``query``'s filters."""
    filters = _id_bounds(query)
    if query.statuses:
        filters.append(async_status.c.status.in_(query.statuses))
    return filters


def _id_bounds(query: listing.JobQuery) -> list[sa.ColumnElement[bool]]:
    """``query``'s conditions on the id: strictly below ``id_below``, strictly above ``id_above``."""
    bounds = []
    if query.id_below is not None:
        bounds.append(async_status.c.id < sa.bindparam("id_below", query.id_below, type_=sa.BigInteger))
    if query.id_above is not None:
        bounds.append(async_status.c.id > sa.bindparam("id_above", query.id_above, type_=sa.BigInteger))
    return bounds
