"""The job list (SPEC §7, §11) as pure decisions: which rows a query string asks for, and how to count them.

No I/O here. ``parse_filter`` reads the parameters that choose jobs (``status``, ``kind``,
``label``, ``errorCode``, ``startedAfter``, ``startedBefore``) into a ``JobFilter``, the seam that
every reader of "which jobs" shares (the list, and whatever else selects jobs by a query string);
``parse_query`` adds the list's order and page into a ``JobQuery``; the store
(``JobStore.list_jobs``) fetches the page and counts it as ``summary_count`` says; the API renders
it. docs/http-surface.md has the parameters and why the count is capped.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Mapping

from tracker import events, labels, merge, timefmt
from tracker.labels import Labels

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
_SINGLE = ("orderby", "sortOrder", "limit", "offset", "page", "idBelow", "idAbove", "startedAfter", "startedBefore")
_KIND = re.compile(labels.KIND_PATTERN, re.ASCII)
_ERROR_CODE = re.compile(events.ERROR_CODE_PATTERN, re.ASCII)
# A span back from now: whole seconds, minutes, hours or days, at most ten digits.
_SPAN = re.compile(r"(?P<number>[0-9]{1,10})(?P<unit>[smhd])", re.ASCII)  # SPAN_PATTERN's parts
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SPAN_PATTERN = r"[0-9]{1,10}[smhd]"
EARLIEST = dt.datetime(1, 1, 1, tzinfo=dt.UTC)

KIND_TEXT = f"kind parameter must be 1 to {labels.MAX_KIND_CHARS} characters of A-Z a-z 0-9 . _ -"
LABEL_TEXT = (
    f"label parameter must be key=value or key, the key {labels.LABEL_KEY_RULE}, "
    f"the value at most {labels.MAX_LABEL_VALUE_CHARS} characters"
)
ERROR_CODE_TEXT = f"errorCode parameter must be 1 to {events.MAX_ERROR_CODE_CHARS} characters of a-z 0-9 _ . -"
STARTED_TEXT = (
    "{name} parameter must be an RFC 3339 time, like 2021-02-18T17:13:56Z, or a span back from now: 90s, 15m, 2h, 7d"
)


@dataclasses.dataclass(frozen=True)
class LabelMatch:
    """One ``label`` parameter: the job has the label ``key``, with this ``value`` (None: any value)."""

    key: str
    value: str | None = None


@dataclasses.dataclass(frozen=True)
class JobFilter:
    """Which jobs: every condition given must hold (an empty one holds for every job).

    ``statuses``, ``kinds``, ``error_codes``: any of them (in STATUSES' order, the others sorted);
    ``labels``: every one; ``started_after`` / ``started_before``: ``start_time`` at or after the
    first and strictly before the second, so that adjacent windows share no job.
    """

    statuses: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    labels: tuple[LabelMatch, ...] = ()
    error_codes: tuple[str, ...] = ()
    started_after: dt.datetime | None = None
    started_before: dt.datetime | None = None

    @property
    def kept_statuses(self) -> tuple[str, ...]:
        """The statuses whose jobs may match, in STATUSES' order: only FAILED jobs carry an error
        (SPEC §11: *t*'s error, on ``failed`` only), so an ``errorCode`` keeps no other."""
        kept = self.statuses or STATUSES
        return tuple(status for status in kept if status == merge.FAILED) if self.error_codes else kept

    @property
    def beyond_status(self) -> bool:
        """Whether any condition other than the status is given."""
        return bool(self.kinds or self.labels or self.error_codes or self.started_after or self.started_before)

    def matches(
        self,
        status: str,
        start_time: dt.datetime,
        kind: str | None = None,
        job_labels: Labels = (),
        error_code: str | None = None,
    ) -> bool:
        """Whether a job with these fields matches, as the store's statement decides it."""
        given = dict(job_labels)
        return (
            status in self.kept_statuses
            and (not self.kinds or kind in self.kinds)
            and (not self.error_codes or error_code in self.error_codes)
            and all(m.key in given and (m.value is None or given[m.key] == m.value) for m in self.labels)
            and (self.started_after is None or start_time >= self.started_after)
            and (self.started_before is None or start_time < self.started_before)
        )


@dataclasses.dataclass(frozen=True)
class JobQuery:
    """One page of the list: the filter, ids strictly between the two bounds (None: unbounded),
    the order, and the page's window."""

    where: JobFilter = JobFilter()
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
    def statuses(self) -> tuple[str, ...]:
        """The statuses asked for (empty: all)."""
        return self.where.statuses

    @property
    def kept_statuses(self) -> tuple[str, ...]:
        """The statuses whose rows the page may hold, in STATUSES' order (none: the page is empty)."""
        return self.where.kept_statuses


@dataclasses.dataclass(frozen=True)
class Count:
    """``summary.count``: exact, or the database's estimate when more rows match than COUNT_CAP."""

    value: int
    estimated: bool = False


def parse_filter(params: Mapping[str, str | list[str]], now: dt.datetime | None = None) -> JobFilter:
    """The jobs a query string chooses: ``status``, ``kind``, ``errorCode`` (each repeatable: any
    of them), ``label`` (``key=value`` or ``key``; repeatable: every one), ``startedAfter`` and
    ``startedBefore`` (an RFC 3339 time with an offset, or a span back from ``now``, default the
    current instant: ``90s``, ``15m``, ``2h``, ``7d``). Other parameters are ignored.

    ``params`` as ``parse_query`` takes them. Raises ValueError with the alert text naming the
    first bad parameter, e.g. ``kind parameter must be 1 to 64 characters of A-Z a-z 0-9 . _ -``.
    """
    for name in ("startedAfter", "startedBefore"):
        if isinstance(params.get(name), list):
            raise ValueError(f"{name} parameter must be given at most once")
    instant = now or timefmt.now()
    return JobFilter(
        statuses=_statuses(params.get("status")),
        kinds=_each(params, "kind", lambda v: v if _KIND.fullmatch(v) else None, KIND_TEXT),
        labels=_labels(params.get("label")),
        error_codes=_each(params, "errorCode", lambda v: v if _ERROR_CODE.fullmatch(v) else None, ERROR_CODE_TEXT),
        started_after=_instant(params, "startedAfter", instant),
        started_before=_instant(params, "startedBefore", instant),
    )


def parse_query(params: Mapping[str, str | list[str]], now: dt.datetime | None = None) -> JobQuery:
    """The page a query string asks for: ``parse_filter``'s jobs, in an order, paged; unknown
    parameters are ignored.

    ``params`` maps each name to its value, or to a list of them when it is repeated (blank
    values kept). Raises ValueError with the alert text naming the first bad parameter, e.g.
    ``limit parameter must be an integer from 1 to 1000``.
    """
    for name in _SINGLE:
        if isinstance(params.get(name), list):
            raise ValueError(f"{name} parameter must be given at most once")
    where = parse_filter(params, now)
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
    return JobQuery(where, order_by, sort_order == "desc", limit, offset, id_below, id_above)


def summary_count(counted: int, estimate: int | None) -> Count:
    """The count to report from ``counted``, the matching rows counted up to COUNT_CAP + 1.

    At most COUNT_CAP: exact. Beyond, ``estimate`` (the database's), never less than what is
    known to match; with no estimate to give (None) the count is exact.
    """
    if counted <= COUNT_CAP or estimate is None:
        return Count(counted)
    return Count(max(estimate, COUNT_CAP + 1), estimated=True)


def _statuses(value: str | list[str] | None) -> tuple[str, ...]:
    values = _values(value)
    for status in values:
        if status not in STATUSES:
            raise ValueError(f"status parameter must be one of {', '.join(STATUSES)}")
    chosen = set(values)
    return tuple(status for status in STATUSES if status in chosen)


def _values(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else value


def _each(
    params: Mapping[str, str | list[str]], name: str, check: Callable[[str], str | None], text: str
) -> tuple[str, ...]:
    """Every value of a repeatable parameter, checked, once each and sorted (so that two queries
    asking for the same set are one query)."""
    kept = set()
    for value in _values(params.get(name)):
        if check(value) is None:
            raise ValueError(text)
        kept.add(value)
    return tuple(sorted(kept))


def _labels(value: str | list[str] | None) -> tuple[LabelMatch, ...]:
    """Each ``label`` parameter: ``key=value`` (split at the first ``=``: a value may hold more)
    or ``key`` alone, checked as a job's labels are (``labels.check_labels``)."""
    matches = set()
    for text in _values(value):
        key, equals, wanted = text.partition("=")
        try:
            labels.check_labels({key: wanted})
        except ValueError:
            raise ValueError(LABEL_TEXT) from None
        matches.add(LabelMatch(key, wanted if equals else None))
    return tuple(sorted(matches, key=lambda m: (m.key, m.value is not None, m.value or "")))


def _instant(params: Mapping[str, str | list[str]], name: str, now: dt.datetime) -> dt.datetime | None:
    """The parameter as an instant: an RFC 3339 time, or ``now`` less a span; None when absent."""
    value = params.get(name)
    if value is None:
        return None
    text = str(value)
    span = _SPAN.fullmatch(text)
    if span is not None:
        # A span from before the first representable instant means "since ever": that instant.
        back = int(span["number"]) * _UNIT_SECONDS[span["unit"]]
        return now - dt.timedelta(seconds=back) if back < (now - EARLIEST).total_seconds() else EARLIEST
    try:
        return timefmt.parse_time(text)
    except ValueError:
        raise ValueError(STARTED_TEXT.format(name=name)) from None


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
