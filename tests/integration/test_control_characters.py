"""Control characters from the broker never reach a log or a terminal raw: a hostile ``message_id``
and routing key, dead-lettered by a real `tracker consume` (text log) and shown by `tracker dead show`."""

from __future__ import annotations

import pathlib
import time

import pika
import pytest

from bench.processes import environment
from tests.processes import ConsumerProcess, run_tracker
from tracker import events
from tracker.config import Settings

pytestmark = [pytest.mark.rabbitmq, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

FORGED = "2026-01-01 00:00:00,000 ERROR consumers.amqp[1]: forged by a publisher"
HOSTILE_ID = f"m1\n{FORGED}\x1b[2J\r"
HOSTILE_KEY = "job.\x1b]0;owned\x07progress"  # still matches the events queue's binding, job.#


def wait_for(condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_hostile_message_id_and_routing_key_stay_on_their_line_in_the_log_and_in_dead_show(
    settings: Settings, raw_channel, tmp_path: pathlib.Path
) -> None:
    consumer = ConsumerProcess(environment(settings, TRACKER_LOG_FORMAT="text"), tmp_path / "consumer.log").start()
    try:
        consumer.wait_ready()
        properties = pika.BasicProperties(content_type=events.CONTENT_TYPE, delivery_mode=2, message_id=HOSTILE_ID)
        raw_channel.basic_publish(settings.exchange, HOSTILE_KEY, b"not JSON", properties, mandatory=True)
        wait_for(lambda: "dead-lettered delivery" in consumer.output(), what="the dead-letter log line")
    finally:
        consumer.terminate(timeout=15)
    log = consumer.output()
    assert not [line for line in log.splitlines() if line.startswith(FORGED)], log
    assert all(line.isprintable() for line in log.splitlines()), log
    assert r"m1\n" + FORGED + r"\x1b[2J\r" in log

    shown = run_tracker(settings, "dead", "show")
    lines = shown.splitlines()
    assert all(line.isprintable() for line in lines), shown
    assert not [line for line in lines if line.startswith(FORGED)], shown
    assert r"routing key job.\x1b]0;owned\x07progress, message_id m1\n" + FORGED + r"\x1b[2J\r, 8 bytes" in shown
