"""The one place that turns instants into text and back: RFC 3339, UTC, microseconds."""

from __future__ import annotations

import datetime as dt
import re

UTC = dt.UTC

_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})"
    r"(?:\.(?P<frac>\d{1,}))?(?P<tz>[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


def format_time(instant: dt.datetime | None) -> str | None:
    """Render an aware instant as Traffic Ops does: ``2021-02-18T17:13:56.352261Z``; None stays None."""
    if instant is None:
        return None
    utc = instant.astimezone(UTC)
    # Written out field by field: strftime's %Y gives "999" for the year 999 on glibc, which no
    # RFC 3339 reader (parse_time included) takes back.
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
        f".{utc.microsecond:06d}Z"
    )


def parse_time(text: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp that carries an offset; return it in UTC, cut to microseconds.

    Raises ValueError with a reason a publisher can act on.
    """
    # The shape format_time writes, which is what publishers send: fromisoformat reads exactly
    # these 27 ASCII characters, in UTC, without the general path's regular expression (it
    # refuses what that path refuses, and then that path gives the reason).
    # tests/unit/test_timefmt.py holds the two to the same answer.
    if (
        len(text) == 27
        and text[26] == "Z"
        and text[10] == "T"
        and text[19] == "."
        and text.isascii()
        and text[4] == text[7] == "-"
        and text[13] == text[16] == ":"
    ):
        try:
            return dt.datetime.fromisoformat(text)
        except ValueError:
            pass
    return _parse_time_generally(text)


def _parse_time_generally(text: str) -> dt.datetime:
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("must be an RFC 3339 timestamp with an offset, like 2021-02-18T17:13:56.352261Z")
    if match["s"] == "60":
        raise ValueError("leap seconds are not supported")
    frac = (match["frac"] or "")[:6].ljust(6, "0")
    tz = match["tz"]
    offset = "+00:00" if tz in ("Z", "z") else tz
    try:
        parsed = dt.datetime.fromisoformat(f"{match['date']}T{match['h']}:{match['m']}:{match['s']}.{frac}{offset}")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("is not a valid date and time") from None


def now() -> dt.datetime:
    """The current instant, aware, in UTC."""
    return dt.datetime.now(UTC)
