"""Cancelling a job (SPEC §12) as pure decisions: the request's event, the message to workers, its parse.

No I/O here. The API records the request (``request_event``) and tells workers
(``control_message``); the consumer's reaper repeats the message while the job stays PENDING and
fails the job after the grace (``tracker.leases``, reason ``cancelled``); the worker library
reads the message back (``parse_control``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable

import orjson

from tracker import events, leases, merge, timefmt

ERROR_CODE = "cancelled"  # the error.code of a job ended by its cancellation, by its worker or the tracker
CONTROL_TYPE = "cancel"
ROUTING_PREFIX = "cancel."
MAX_BULK = 10_000  # jobs one bulk request cancels at most
BY = ("worker", "tracker")  # who ended a cancelled job: the label values of tracker_jobs_cancelled_total


@dataclasses.dataclass(frozen=True)
class CancelNotice:
    """What workers are told of one job's cancellation: the job, when it was first asked, and why."""

    job_id: int
    requested_at: dt.datetime
    message: str | None

    @property
    def routing_key(self) -> str:
        return routing_key(self.job_id)

    def body(self) -> bytes:
        """The control message's JSON body (SPEC §12)."""
        return orjson.dumps(
            {
                "type": CONTROL_TYPE,
                "job_id": self.job_id,
                "requested_at": timefmt.format_time(self.requested_at),
                "message": self.message,
            }
        )


def routing_key(job_id: int) -> str:
    """``cancel.<job_id>``: what a worker binds its queue with to hear of that job."""
    return f"{ROUTING_PREFIX}{job_id}"


def default_message(username: str) -> str:
    """The request's message when its body gives none."""
    return f"Cancellation requested by {username}."


def request_event(job_id: int, message: str, at: dt.datetime) -> events.Event:
    """The ``cancel_requested`` event that records a request made at ``at``."""
    return events.new_event(job_id, events.CANCEL_REQUESTED, message, occurred_at=at)


def parse_control(body: bytes) -> CancelNotice | None:
    """A control message read back; None for anything that is not a well-formed cancel message
    (a worker ignores what it does not understand, as the consumer ignores unknown fields)."""
    try:
        value = orjson.loads(body)
        if not isinstance(value, dict) or value.get("type") != CONTROL_TYPE:
            return None
        job_id = value["job_id"]
        if type(job_id) is not int or not 1 <= job_id <= events.MAX_JOB_ID:
            return None
        message = value.get("message")
        return CancelNotice(
            job_id, timefmt.parse_time(value["requested_at"]), message if isinstance(message, str) else None
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def grace_event_id(job_id: int) -> str:
    """The id of the tracker's own ``failed`` event after the grace: derived from the job and the reason."""
    return leases.Lost(job_id, "cancelled", 0, timefmt.now()).event_id


def cancelled_by(ended_failed: Iterable[int], batch: Iterable[events.Event]) -> list[str]:
    """Who ended each job of ``ended_failed`` (ended FAILED by ``batch``) by a cancellation:
    ``tracker`` for its grace event, ``worker`` for any other ``cancelled`` failure; jobs ended
    otherwise give nothing. The ending event is the batch's earliest terminal one of the job."""
    ended = set(ended_failed)
    first: dict[int, events.Event] = {}
    for event in batch:
        if event.job_id in ended and event.type == "failed":
            kept = first.get(event.job_id)
            if kept is None or merge.key_of(event) < merge.key_of(kept):
                first[event.job_id] = event
    found = []
    for job_id, event in sorted(first.items()):
        if event.error_code == ERROR_CODE:
            found.append("tracker" if event.event_id == grace_event_id(job_id) else "worker")
    return found
