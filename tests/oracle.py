"""The merge rule of SPEC §3 and §11 written again from their words, sharing nothing with ``tracker.merge``.

It reads events in their wire form (the JSON objects of SPEC §3: ``Event.to_wire()``, or dicts a
test writes), so that the code under test and this oracle have no key, state or type in common.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class Row:
    """What SPEC §2 shows of a job that the events decide (its status, message and end_time), and
    what §11 adds: ``result`` and ``error`` as JSON values, None where the row shows none."""

    status: str
    message: str | None
    end_time: dt.datetime | None
    progress: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    cancel_requested_at: dt.datetime | None = None


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
    # §11: "the progress of the latest event in R that carries one (null if none)"
    progresses = [e["progress"] for e in in_r if e.get("progress") is not None]
    progress = progresses[-1] if progresses else None
    # "the occurred_at of the earliest cancel_requested event in R (null if none)"
    cancels = [e for e in in_r if e["type"] == "cancel_requested"]
    cancel_requested_at = _instant(cancels[0]["occurred_at"]) if cancels else None
    if first_terminal is None:
        return Row("PENDING", message, None, progress, cancel_requested_at=cancel_requested_at)
    status = "SUCCEEDED" if first_terminal["type"] == "succeeded" else "FAILED"
    terminal_at = _instant(first_terminal["occurred_at"])
    start = _instant(start_time)
    # "result and error are those of t (null without t, or when t carries none)"
    error = first_terminal.get("error")
    if error is not None:
        error = {name: error[name] for name in ("code", "details") if error.get(name) is not None}
    return Row(
        status,
        message,
        terminal_at if terminal_at > start else start,
        progress,
        first_terminal.get("result"),
        error,
        cancel_requested_at,
    )


def as_row(shown: Any) -> Row:
    """The Row of what the tracker shows of a job: anything with its row's attributes (``status``,
    ``message``, ``end_time``, ``progress``, ``result_json``, ``error_code``, ``error_details_json``,
    ``cancel_requested_at``), the JSON texts read back as values. A translation, not a rule."""
    error = None
    if shown.error_code is not None:
        error = {"code": shown.error_code}
        if shown.error_details_json is not None:
            error["details"] = json.loads(shown.error_details_json)
    return Row(
        shown.status,
        shown.message,
        shown.end_time,
        shown.progress,
        None if shown.result_json is None else json.loads(shown.result_json),
        error,
        shown.cancel_requested_at,
    )
