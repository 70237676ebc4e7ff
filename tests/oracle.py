"""The merge rule of SPEC §3 written again from its words, sharing nothing with ``tracker.merge``.

It reads events in their wire form (the JSON objects of SPEC §3: ``Event.to_wire()``, or dicts a
test writes), so that the code under test and this oracle have no key, state or type in common.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class Row:
    """What SPEC §2 shows of a job: its status, message and end_time."""

    status: str
    message: str | None
    end_time: dt.datetime | None


def _instant(value: str | dt.datetime) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert value.tzinfo is not None, "occurred_at carries an offset"
    return value.astimezone(dt.UTC)


def _microseconds(at: dt.datetime) -> int:
    """occurred_at at microsecond precision, as an integer count from the epoch."""
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def sort_key(event: Mapping[str, Any]) -> tuple[int, int, str]:
    """(occurred_at in µs, seq with absent = 0, event_id as lowercase text): SPEC §3's order."""
    seq = event.get("seq")
    return _microseconds(_instant(event["occurred_at"])), 0 if seq is None else int(seq), event["event_id"].lower()


def expected_row(start_time: dt.datetime, created_message: str | None, events: Iterable[Mapping[str, Any]]) -> Row:
    """The row of a job created at ``start_time`` with ``created_message``, after the set ``events``.

    A set: an event_id seen twice is the same event (the first copy is taken).
    """
    distinct: dict[str, Mapping[str, Any]] = {}
    for event in events:
        distinct.setdefault(event["event_id"].lower(), event)
    ordered = sorted(distinct.values(), key=sort_key)
    terminals = [e for e in ordered if e["type"] in ("succeeded", "failed")]
    first_terminal = terminals[0] if terminals else None
    if first_terminal is None:
        in_r = ordered
    else:
        limit = sort_key(first_terminal)
        in_r = [e for e in ordered if sort_key(e) <= limit]
    messages = [e["message"] for e in in_r if e.get("message") is not None]
    message = messages[-1] if messages else created_message
    if first_terminal is None:
        return Row("PENDING", message, None)
    status = "SUCCEEDED" if first_terminal["type"] == "succeeded" else "FAILED"
    terminal_at = _instant(first_terminal["occurred_at"])
    start = _instant(start_time)
    return Row(status, message, terminal_at if terminal_at > start else start)
