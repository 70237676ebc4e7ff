"""A `publisher.job` block hearing its job's cancellation (SPEC §12), without a broker: the listener faked."""

from __future__ import annotations

import datetime as dt

import pika
import pytest

from tracker import cancels, events
from tracker.cancellation import OnCancel
from tracker.config import Settings
from tracker.errors import JobCancelled
from tracker.publisher import Publisher

AT = dt.datetime(2026, 12, 7, 16, 0, tzinfo=dt.UTC)


class Ear:
    """A listener that records who listens, and says what the test tells it to."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.watchers: dict[int, list[OnCancel]] = {}

    def watch(self, job_id: int, on_cancel: OnCancel) -> bool:
        self.log.append(f"watch {job_id}")
        self.watchers.setdefault(job_id, []).append(on_cancel)
        return True

    def unwatch(self, job_id: int, on_cancel: OnCancel) -> None:
        self.log.append(f"unwatch {job_id}")
        self.watchers[job_id].remove(on_cancel)

    def say(self, job_id: int, message: str | None) -> None:
        for on_cancel in list(self.watchers.get(job_id, ())):
            on_cancel(cancels.CancelNotice(job_id, AT, message))


class RecordingPublisher(Publisher):
    def __init__(self) -> None:
        super().__init__(Settings(), timeout_s=0.5)
        self.log: list[str] = []
        self.sent: list[events.Event] = []
        self.ear = Ear(self.log)

    def cancel_listener(self) -> Ear:  # type: ignore[override]
        return self.ear

    def _send(self, routing_key: str, body: bytes, properties: pika.BasicProperties) -> None:
        event = events.parse(body, properties.content_type)
        self.log.append(f"sent {event.type}")
        self.sent.append(event)


def test_a_heard_cancel_ends_the_block_quietly_with_the_cancelled_failure() -> None:
    publisher = RecordingPublisher()
    with publisher.job(7) as job:
        job.check_cancelled()  # nothing heard yet: goes on
        publisher.ear.say(8, "not yours")
        assert not job.cancelled.is_set()
        publisher.ear.say(7, "Wrong target.")
        publisher.ear.say(7, "again")  # the repeat: the first message stays
        assert job.cancelled.is_set()
        with pytest.raises(JobCancelled, match=r"^Wrong target\.$"):
            job.check_cancelled()
        job.check_cancelled()
        pytest.fail("not reached")  # pragma: no cover
    (failed,) = publisher.sent
    assert (failed.job_id, failed.type, failed.message, failed.error_code) == (
        7,
        "failed",
        "Wrong target.",
        "cancelled",
    )
    # listening only while the block is open: bound before, unbound before its final event
    assert publisher.log == ["watch 7", "unwatch 7", "sent failed"]


def test_a_cancel_without_a_message_says_cancelled() -> None:
    publisher = RecordingPublisher()
    with publisher.job(7) as job:
        publisher.ear.say(7, None)
        job.check_cancelled()
    assert [(e.message, e.error_code) for e in publisher.sent] == [("cancelled", "cancelled")]


def test_a_worker_may_finish_anyway_or_fail_otherwise() -> None:
    publisher = RecordingPublisher()
    with publisher.job(7) as job:
        publisher.ear.say(7, "stop")
        job.final_message = "Finished all the same."
    with pytest.raises(RuntimeError, match="disk full"), publisher.job(8):
        publisher.ear.say(8, "stop")
        raise RuntimeError("disk full")
    assert [(e.job_id, e.type, e.message, e.error_code) for e in publisher.sent] == [
        (7, "succeeded", "Finished all the same.", None),
        (8, "failed", "disk full", None),
    ]


def test_a_block_that_does_not_listen_hears_nothing() -> None:
    publisher = RecordingPublisher()
    with publisher.job(7, listen=False) as job:
        assert not job.cancelled.is_set()
    assert publisher.log == ["sent succeeded"]
