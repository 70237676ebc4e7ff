"""`publisher.job(…, heartbeat_timeout_s=…)` without a broker: the beats, their stop, their failures."""

from __future__ import annotations

import logging
import threading
import time

import pika
import pika.exceptions
import pytest

from tracker import events
from tracker.config import Settings
from tracker.publisher import JobReport, Publisher, heartbeat_interval


class RecordingPublisher(Publisher):
    """A Publisher whose broker is a list; ``failing`` makes every send fail as a lost broker does."""

    def __init__(self) -> None:
        super().__init__(Settings(), timeout_s=0.5)
        self.sent: list[events.Event] = []
        self.failing = False
        self.broken = False
        self.sending = threading.Lock()

    def job(self, job_id: int, *, heartbeat_timeout_s: float | None = None, listen: bool = False) -> JobReport:
        # No broker to listen for cancel messages on (tests/unit/test_cancel_report.py fakes one).
        return super().job(job_id, heartbeat_timeout_s=heartbeat_timeout_s, listen=listen)

    def _send(self, routing_key: str, body: bytes, properties: pika.BasicProperties) -> None:
        if self.broken and threading.current_thread().name.startswith("tracker-heartbeat-"):
            raise TypeError("a bug in a beat")
        if self.failing:
            raise pika.exceptions.AMQPConnectionError("broker away")
        with self.sending:
            self.sent.append(events.parse(body, properties.content_type))


def beats(publisher: RecordingPublisher) -> list[events.Event]:
    return [event for event in publisher.sent if event.type == "progress" and event.message is None]


def test_a_third_of_the_lease():
    assert heartbeat_interval(60) == 20
    assert heartbeat_interval(0.6) == pytest.approx(0.2)


def test_no_lease_no_thread():
    publisher = RecordingPublisher()
    for lease in (None, 0):
        with publisher.job(1, heartbeat_timeout_s=lease):
            assert not [thread for thread in threading.enumerate() if thread.name.startswith("tracker-heartbeat-")]
            time.sleep(0.05)
    assert [event.type for event in publisher.sent] == ["succeeded", "succeeded"]


def test_a_negative_lease_is_refused():
    with pytest.raises(ValueError, match="heartbeat_timeout_s must be 0 or more"):
        Publisher(Settings()).job(1, heartbeat_timeout_s=-1)


def test_beats_at_once_then_every_third_and_stop_before_the_final_event():
    publisher = RecordingPublisher()
    with publisher.job(7, heartbeat_timeout_s=0.3) as job:
        time.sleep(0.35)
        job.progress("half way")
        time.sleep(0.2)
    assert 5 <= len(beats(publisher)) <= 7  # at 0, 0.1 … 0.5 s
    assert publisher.sent[-1].type == "succeeded"
    assert [event.seq for event in publisher.sent] == list(range(len(publisher.sent)))
    assert all(event.job_id == 7 for event in publisher.sent)


def test_leaving_the_block_does_not_wait_for_the_next_beat():
    publisher = RecordingPublisher()
    with publisher.job(7, heartbeat_timeout_s=3600):
        time.sleep(0.1)
        left = time.monotonic()
    assert time.monotonic() - left < 0.5
    assert [event.type for event in publisher.sent] == ["progress", "succeeded"]


def test_a_raising_block_stops_the_beats_and_fails_the_job():
    publisher = RecordingPublisher()
    with pytest.raises(KeyError), publisher.job(7, heartbeat_timeout_s=0.15):
        time.sleep(0.2)
        raise KeyError("no such host")
    final = publisher.sent[-1]
    assert (final.type, final.message) == ("failed", "'no such host'")
    assert len(beats(publisher)) >= 2
    time.sleep(0.2)
    assert publisher.sent[-1] == final


def test_beats_that_fail_are_logged_and_tried_again_and_the_block_goes_on(caplog):
    publisher = RecordingPublisher()
    publisher.failing = True
    with publisher.job(7, heartbeat_timeout_s=0.15):
        time.sleep(0.2)
        publisher.failing = False
        time.sleep(0.2)
    warnings = [record for record in caplog.records if record.name == "tracker.publisher"]
    assert len(warnings) >= 2
    assert all(record.levelno == logging.WARNING for record in warnings)
    assert "heartbeat of job 7: heartbeat " in warnings[0].getMessage()
    assert "not confirmed: AMQPConnectionError" in warnings[0].getMessage()
    assert len(beats(publisher)) >= 2, "beating again once the broker is back"
    assert publisher.sent[-1].type == "succeeded"


def test_a_beat_that_meets_a_bug_is_logged_with_its_traceback_and_the_beats_go_on(caplog):
    publisher = RecordingPublisher()
    publisher.broken = True
    with publisher.job(7, heartbeat_timeout_s=0.15):
        time.sleep(0.2)
    errors = [record for record in caplog.records if record.name == "tracker.publisher"]
    assert len(errors) >= 2, "the thread went on after the first"
    assert all(record.levelno == logging.ERROR and record.exc_info for record in errors)
    assert publisher.sent[-1].type == "succeeded"
