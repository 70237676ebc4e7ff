"""Readiness without I/O: /readyz's alert names the failed checks only; their details go to the log, once per change."""

from __future__ import annotations

import logging

import pytest

from tracker.readiness import NotReady, ReadinessLog

DOWN = NotReady("database", 'OperationalError: connection to server at "10.0.0.7", port 5433 failed')
OLD = NotReady("schema", "the database schema is at revision 0002, not the newest (0006): run tracker migrate")
AWAY = NotReady("broker", "the consumer holds no subscription")


@pytest.fixture
def readiness() -> ReadinessLog:
    return ReadinessLog(logging.getLogger("tracker.test.readiness"))


def test_the_alert_says_which_checks_failed_and_nothing_of_their_detail(readiness: ReadinessLog) -> None:
    assert readiness.alert([None, None]) is None
    assert readiness.alert([DOWN]) == "the database does not answer"
    assert readiness.alert([OLD, None]) == "the database schema is not the newest: run tracker migrate"
    assert readiness.alert([AWAY, DOWN]) == "the database does not answer; not connected to RabbitMQ"
    assert readiness.alert([DOWN, NotReady("database", "another driver error")]) == "the database does not answer"


def test_the_details_are_logged_once_per_change_not_once_per_probe(
    readiness: ReadinessLog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "tracker.test.readiness"):
        for _ in range(3):
            readiness.alert([DOWN, None])
        readiness.alert([DOWN, AWAY])
        readiness.alert([DOWN, AWAY])
        readiness.alert([None, None])
        readiness.alert([None, None])
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"not ready: the database does not answer ({DOWN.detail})"),
        ("WARNING", f"not ready: the database does not answer ({DOWN.detail})"),
        ("WARNING", f"not ready: not connected to RabbitMQ ({AWAY.detail})"),
        ("INFO", "ready again"),
    ]
