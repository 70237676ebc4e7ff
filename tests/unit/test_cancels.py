"""Cancelling's pure parts (SPEC §12): the control message, its parse, the bulk filter rule, who ended a job."""

from __future__ import annotations

import datetime as dt

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tests.spec_texts import CANCEL_GRACE_MESSAGE, CANCELLED_BY
from tracker import cancels, events, leases

AT = dt.datetime(2021, 2, 18, 17, 13, 56, 352261, tzinfo=dt.UTC)


def test_the_control_message_is_the_specs() -> None:
    notice = cancels.CancelNotice(42, AT, "stop")
    assert notice.routing_key == "cancel.42"
    assert orjson.loads(notice.body()) == {
        "type": "cancel",
        "job_id": 42,
        "requested_at": "2021-02-18T17:13:56.352261Z",
        "message": "stop",
    }
    assert cancels.default_message("ops") == CANCELLED_BY.format(user="ops")


@given(st.integers(1, events.MAX_JOB_ID), st.one_of(st.none(), st.text(max_size=50)))
def test_a_control_message_reads_back(job_id: int, message: str | None) -> None:
    notice = cancels.CancelNotice(job_id, AT, message)
    assert cancels.parse_control(notice.body()) == notice


@given(st.binary(max_size=80))
def test_anything_else_is_not_a_cancel(body: bytes) -> None:
    assert cancels.parse_control(body) is None or b"cancel" in body


def test_malformed_control_messages_are_ignored() -> None:
    for body in (
        b"",
        b"[]",
        b'{"type":"pause","job_id":1,"requested_at":"2021-02-18T17:13:56Z"}',
        b'{"type":"cancel","job_id":0,"requested_at":"2021-02-18T17:13:56Z"}',
        b'{"type":"cancel","job_id":true,"requested_at":"2021-02-18T17:13:56Z"}',
        b'{"type":"cancel","job_id":1}',
        b'{"type":"cancel","job_id":1,"requested_at":"yesterday"}',
    ):
        assert cancels.parse_control(body) is None, body


def test_the_grace_failure_is_a_lost_jobs() -> None:
    lost = leases.Lost(7, "cancelled", 60, AT)
    event = lost.failed_event()
    assert (event.type, event.message, event.error_code) == ("failed", CANCEL_GRACE_MESSAGE.format(n=60), "cancelled")
    assert event.event_id == cancels.grace_event_id(7) != leases.Lost(7, "heartbeat", 60, AT).event_id
    # the first limit to run out decides; on a tie, the deadline, then the lease, then the grace
    expired = [
        leases.Expired(7, "cancelled", 60, AT),
        leases.Expired(7, "heartbeat", 30, AT),
        leases.Expired(8, "cancelled", 60, AT),
        leases.Expired(8, "timeout", 60, AT + dt.timedelta(seconds=1)),
    ]
    assert [(d.job_id, d.reason) for d in leases.decide(expired, AT)] == [(7, "heartbeat"), (8, "cancelled")]
    assert [(d.job_id, d.reason) for d in leases.decide(reversed(expired), AT)] == [(7, "heartbeat"), (8, "cancelled")]


def test_who_ended_a_cancelled_job() -> None:
    by_worker = events.new_event(1, "failed", "stopped", error_code="cancelled", occurred_at=AT)
    by_tracker = leases.Lost(2, "cancelled", 60, AT).failed_event()
    other = events.new_event(3, "failed", "disk full", error_code="disk_full", occurred_at=AT)
    later = events.new_event(3, "failed", "stopped", error_code="cancelled", occurred_at=AT + dt.timedelta(seconds=1))
    not_ended = events.new_event(4, "failed", "stopped", error_code="cancelled", occurred_at=AT)
    batch = [later, by_worker, other, by_tracker, not_ended]
    assert cancels.cancelled_by([1, 2, 3], batch) == ["worker", "tracker"]
