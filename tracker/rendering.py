"""A job's row and its timeline's entries as clients see them (SPEC §2, §11, §13): one rendering for
the API's answers and the webhooks' messages. No I/O."""

from __future__ import annotations

from typing import Any

import orjson

from tracker import timefmt
from tracker.model import Job, TimelineEvent


def job_view(job: Job) -> dict[str, Any]:
    """A job as the API shows it: Traffic Ops' five fields in its order, then SPEC §11's and §13's
    ``notify``, each only when set, so that a job using none of them is answered as Traffic Ops
    answers (SPEC §2)."""
    view: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "start_time": timefmt.format_time(job.start_time),
        "end_time": timefmt.format_time(job.end_time),
        "message": job.message,
    }
    if job.kind is not None:
        view["kind"] = job.kind
    if job.labels:
        view["labels"] = dict(job.labels)
    if job.progress is not None:
        view["progress"] = _number(job.progress)
    _outcome(view, job.result_json, job.error_code, job.error_details_json)
    if job.cancel_requested_at is not None:
        view["cancel_requested_at"] = timefmt.format_time(job.cancel_requested_at)
    if job.notify_url is not None:
        view["notify"] = {"url": job.notify_url, "state": job.notify_state, "attempts": job.notify_attempts}
    return view


def event_view(event: TimelineEvent) -> dict[str, Any]:
    """One event of a job's timeline as the API shows it (SPEC §7), times as in ``job_view``, and
    its ``progress``, ``result`` and ``error`` when it has them (SPEC §11)."""
    view: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event.type,
        "occurred_at": timefmt.format_time(event.occurred_at),
        "received_at": timefmt.format_time(event.received_at),
        "seq": event.seq,
        "message": event.message,
    }
    if event.progress is not None:
        view["progress"] = _number(event.progress)
    _outcome(view, event.result_json, event.error_code, event.error_details_json)
    return view


def _number(value: float) -> float | int:
    """A progress as JSON shows it: a whole number without a fraction (50, not 50.0)."""
    return int(value) if value.is_integer() else value


def _outcome(view: dict[str, Any], result_json: str | None, code: str | None, details_json: str | None) -> None:
    """Add ``result`` and ``error`` to ``view`` when there are any; their JSON texts are written into
    the answer as they are kept, not read and written again."""
    if result_json is not None:
        view["result"] = orjson.Fragment(result_json)
    if code is not None:
        error: dict[str, Any] = {"code": code}
        if details_json is not None:
            error["details"] = orjson.Fragment(details_json)
        view["error"] = error
