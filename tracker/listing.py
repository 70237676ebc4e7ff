"""The job list (SPEC §7) as pure decisions: which rows a query string asks for, and how to count them.

No I/O here. ``parse_query`` reads the parameters of ``GET /api/{version}/async_status`` into a
``JobQuery``; the store (``JobStore.list_jobs``) fetches the page and counts it as ``summary_count``
says; the API renders it. docs/http-surface.md has the parameters and why the count is capped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from tracker import merge

STATUSES = (merge.PENDING, merge.SUCCEEDED, merge.FAILED)
ORDER_KEYS = ("id", "start_time", "end_time", "status")
SORT_ORDERS = ("asc", "desc")
MIN_LIMIT, MAX_LIMIT, DEFAULT_LIMIT = 1, 1000, 100
MAX_INT64 = 2**63 - 1
# Matching rows are counted exactly up to this many; beyond, the database's estimate is given and
# the summary says so (``estimated``). Counting this many entries of an index takes a few
# milliseconds on PostgreSQL; an exact count of millions takes seconds (docs/http-surface.md).
COUNT_CAP = 1000

_INTEGER = re.compile(r"(?P<sign>[+-]?)(?P<digits>[0-9]+)")
_SINGLE = ("orderby", "sortOrder", "limit", "offset", "page", "idBelow", "idAbove")


@dataclasses.dataclass(frozen=True)
class JobQuery:
    """One page of the list: the filters (statuses kept, empty: all; ids strictly between the two
    bounds, None: unbounded), the order, and the page's window."""

    statuses: tuple[str, ...] = ()
    order_by: str = "id"
    descending: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    id_below: int | None = None
    id_above: int | None = None

    @property
    def reach(self) -> int:
        """How many rows, in order, the page lies within (offset + limit, at most int64's largest)."""
        return min(self.offset + self.limit, MAX_INT64)

    @property
    def kept_statuses(self) -> tuple[str, ...]:
        """The statuses whose rows the page may hold, in STATUSES' order."""
        return self.statuses or STATUSES


@dataclasses.dataclass(frozen=True)
class Count:
    """``summary.count``: exact, or the database's estimate when more rows match than COUNT_CAP."""

    value: int
    estimated: bool = False


def parse_query(params: Mapping[str, str | list[str]]) -> JobQuery:
    """The page a query string asks for; unknown parameters are ignored.

    ``params`` maps each name to its value, or to a list of them when it is repeated (blank
    values kept). Raises ValueError with the alert text naming the first bad parameter, e.g.
    ``limit parameter must be an integer from 1 to 1000``.
    """
    for name in _SINGLE:
        if isinstance(params.get(name), list):
            raise ValueError(f"{name} parameter must be given at most once")
    statuses = _statuses(params.get("status"))
    order_by = _single(params, "orderby", "id")
    if order_by not in ORDER_KEYS:
        raise ValueError(f"orderby parameter must be one of {', '.join(ORDER_KEYS)}")
    sort_order = _single(params, "sortOrder", "asc")
    if sort_order not in SORT_ORDERS:
        raise ValueError("sortOrder parameter must be asc or desc")
    limit = _integer(params, "limit", MIN_LIMIT, MAX_LIMIT) or DEFAULT_LIMIT
    offset = _integer(params, "offset", 0, MAX_INT64)
    page = _integer(params, "page", 1, MAX_INT64)
    if offset is None:
        offset = 0 if page is None else min((page - 1) * limit, MAX_INT64)
    id_below = _integer(params, "idBelow", 0, MAX_INT64)
    id_above = _integer(params, "idAbove", 0, MAX_INT64)
    return JobQuery(statuses, order_by, sort_order == "desc", limit, offset, id_below, id_above)


def summary_count(counted: int, estimate: int | None) -> Count:
    """The count to report from ``counted``, the matching rows counted up to COUNT_CAP + 1.

    At most COUNT_CAP: exact. Beyond, ``estimate`` (the database's), never less than what is
    known to match; with no estimate to give (None) the count is exact.
    """
    if counted <= COUNT_CAP or estimate is None:
        return Count(counted)
    return Count(max(estimate, COUNT_CAP + 1), estimated=True)


def _statuses(value: str | list[str] | None) -> tuple[str, ...]:
    values = [] if value is None else [value] if isinstance(value, str) else value
    for status in values:
        if status not in STATUSES:
            raise ValueError(f"status parameter must be one of {', '.join(STATUSES)}")
    chosen = set(values)
    return tuple(status for status in STATUSES if status in chosen)


def _single(params: Mapping[str, str | list[str]], name: str, default: str) -> str:
    value = params.get(name)
    return default if value is None else str(value)


def _integer(params: Mapping[str, str | list[str]], name: str, low: int, high: int) -> int | None:
    """The parameter as an integer from ``low`` to ``high`` (sign and leading zeros allowed, as Go's
    strconv.Atoi reads it); None when absent. Raises ValueError naming it otherwise."""
    value = params.get(name)
    if value is None:
        return None
    match = _INTEGER.fullmatch(str(value))
    if match is not None:
        # Python's int() refuses very long text: leading zeros go first, and a long number is a large one.
        digits = match["digits"].lstrip("0") or "0"
        if len(digits) <= 19 and low <= (number := int(match["sign"] + digits)) <= high:
            return number
    raise ValueError(f"{name} parameter must be an integer from {low} to {high}")
