"""tracker.outages.OutageLog: a service's absence said once, again on a slow cadence, and its return once."""

from __future__ import annotations

import logging

import pytest

from tracker.outages import OutageLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    caplog.set_level(logging.DEBUG, logger="test.outages")
    lines: list[tuple[int, str]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((record.levelno, record.getMessage()))

    logging.getLogger("test.outages").addHandler(handler := Keep())
    yield lines
    logging.getLogger("test.outages").removeHandler(handler)


def test_an_outage_is_said_once_then_every_minute_then_its_end_once(said: list[tuple[int, str]]) -> None:
    clock = Clock()
    outage = OutageLog(logging.getLogger("test.outages"), "database answers again", every_s=60, clock=clock)
    assert outage.problem is None
    outage.recovered()  # nothing was wrong: nothing to say
    assert said == []

    for _ in range(30):  # a retry every 2 s for a minute
        outage.failed("database unavailable", "OperationalError: refused; retrying")
        clock.now += 2
    assert outage.problem == "database unavailable"
    assert said == [(logging.WARNING, "database unavailable: OperationalError: refused; retrying")]

    outage.failed("database unavailable", "OperationalError: refused; retrying")
    assert said[-1] == (logging.WARNING, "database unavailable (for 60 s): OperationalError: refused; retrying")

    clock.now += 15
    outage.recovered()
    outage.recovered()
    assert said[-1] == (logging.INFO, "database answers again after 75 s")
    assert len(said) == 3
    assert outage.problem is None


def test_a_new_problem_is_said_at_once_and_a_new_outage_starts_afresh(said: list[tuple[int, str]]) -> None:
    clock = Clock()
    outage = OutageLog(logging.getLogger("test.outages"), "back", clock=clock)
    outage.failed("database unavailable", "refused")
    clock.now += 1
    outage.failed("database broken", "UndefinedColumn", level=logging.ERROR)
    assert said[-1] == (logging.ERROR, "database broken: UndefinedColumn")
    assert outage.problem == "database broken"
    clock.now += 1
    outage.recovered()
    assert said[-1] == (logging.INFO, "back after 2 s")  # counted from the outage's start
    clock.now += 100
    outage.failed("database unavailable", "refused")
    assert said[-1] == (logging.WARNING, "database unavailable: refused")
    assert len(said) == 4
