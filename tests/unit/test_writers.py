"""The consumer's writer threads (consumers.writers) with a fake projector: order, retries, abandon."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pytest

from consumers.status import Delivery, Outcome
from consumers.writers import DATABASE_BROKEN, DATABASE_UNAVAILABLE, Writers
from tracker.errors import StoreBroken, StoreUnavailable


class FakeProjector:
    """Applies every delivery; ``unavailable`` times it first raises StoreUnavailable (for ever if
    negative); a batch whose first tag is in ``held`` waits for ``release``."""

    def __init__(self, unavailable: int = 0, held: frozenset[int] = frozenset()) -> None:
        self.unavailable = unavailable
        self.held = held
        self.release = threading.Event()
        self.attempts = 0
        self.threads: set[str] = set()

    def handle(self, deliveries: Sequence[Delivery]) -> Outcome:
        self.attempts += 1
        self.threads.add(threading.current_thread().name)
        if deliveries[0].tag in self.held:
            self.release.wait(5)
        if self.unavailable:
            self.unavailable -= 1
            raise StoreUnavailable("OperationalError: connection refused")
        return Outcome(applied=len(deliveries), dead=())


class Bug(Exception):
    pass


class BuggyProjector:
    def handle(self, deliveries: Sequence[Delivery]) -> Outcome:
        raise Bug("a bug in the fold")


class Telemetry:
    """Records the kinds of the store errors it is told of."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors

    def written(self, outcome: Outcome, deliveries: int, seconds: float) -> None:
        pass

    def store_error(self, kind: str) -> None:
        self.errors.append(kind)


def batch(first: int, count: int) -> list[Delivery]:
    return [Delivery(tag=tag, body=b"{}") for tag in range(first, first + count)]


def test_a_batch_is_written_on_a_writer_thread_and_given_back_with_its_outcome() -> None:
    projector = FakeProjector()
    done = threading.Event()
    with Writers(projector, 2, threading.Event()) as writers:
        writers.write(batch(1, 3), through=3, on_done=done.set)
        assert (len(writers), writers.deliveries) == (1, 3)
        written = writers.next_written(wait=True)
        assert written is not None and len(writers) == 0
        assert written.outcome.result() == Outcome(applied=3, dead=())
        assert (written.through, [d.tag for d in written.deliveries]) == (3, [1, 2, 3])
        assert done.wait(1), "on_done did not run"
        assert writers.next_written(wait=True) is None  # none left
    assert all(name.startswith("tracker-writer") for name in projector.threads)  # bench.anatomy counts them so


def test_batches_come_back_in_the_order_they_were_handed_over() -> None:
    projector = FakeProjector(held=frozenset({1}))
    with Writers(projector, 2, threading.Event()) as writers:
        writers.write(batch(1, 2), through=2, on_done=lambda: None)
        writers.write(batch(3, 2), through=4, on_done=lambda: None)
        deadline = time.monotonic() + 5
        while projector.attempts < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the second is written by now; the first is held
        assert writers.next_written() is None, "a later batch came back before an earlier one"
        projector.release.set()
        first, second = writers.next_written(wait=True), writers.next_written(wait=True)
        assert first is not None and second is not None
        assert (first.through, second.through) == (2, 4)


def test_a_batch_is_retried_while_the_database_is_away(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consumers.writers")
    projector = FakeProjector(unavailable=1)
    with Writers(projector, 1, threading.Event()) as writers:
        writers.write(batch(1, 2), through=2, on_done=lambda: None)
        written = writers.next_written(wait=True)
    assert written is not None and written.outcome.result() == Outcome(applied=2, dead=())
    assert projector.attempts == 2
    assert "database unavailable: OperationalError: connection refused; nothing is acked" in caplog.text
    assert "database takes batches again after" in caplog.text


def test_an_outage_is_said_once_not_at_every_retry_and_readiness_hears_of_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consumers.writers")
    projector = FakeProjector(unavailable=4)
    errors: list[str] = []
    with Writers(projector, 1, threading.Event(), telemetry=Telemetry(errors)) as writers:
        assert writers.problem is None
        writers.write(batch(1, 2), through=2, on_done=lambda: None)
        deadline = time.monotonic() + 5
        while projector.attempts < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writers.problem == DATABASE_UNAVAILABLE  # while the batch in hand waits for it
        written = writers.next_written(wait=True)
        assert writers.problem is None  # nothing in hand
    assert written is not None and written.outcome.result() == Outcome(applied=2, dead=())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]  # 4 failed attempts, 1 line
    assert errors == ["unavailable"] * 4


class BrokenProjector:
    """Broken (say, a column dropped) for its first ``broken`` attempts, then applies every delivery."""

    def __init__(self, broken: int) -> None:
        self.broken = broken

    def handle(self, deliveries: Sequence[Delivery]) -> Outcome:
        if self.broken:
            self.broken -= 1
            raise StoreBroken('UndefinedColumn: column "message" does not exist')
        return Outcome(applied=len(deliveries), dead=())


def test_a_broken_database_is_retried_logged_as_an_error_and_counted_apart(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consumers.writers")
    errors: list[str] = []
    projector = BrokenProjector(broken=3)
    with Writers(projector, 1, threading.Event(), telemetry=Telemetry(errors)) as writers:
        writers.write(batch(1, 3), through=3, on_done=lambda: None)
        deadline = time.monotonic() + 5
        while projector.broken > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writers.problem == DATABASE_BROKEN
        written = writers.next_written(wait=True)
    assert written is not None and written.outcome.result() == Outcome(applied=3, dead=())  # nothing dead-lettered
    assert errors == ["broken"] * 3
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage().startswith(
        'database cannot apply events (its schema or grants): UndefinedColumn: column "message" does not exist; '
        "nothing is acked or dead-lettered"
    )


@pytest.mark.parametrize(("stopping", "why"), [(False, "and the broker connection is gone"), (True, "while stopping")])
def test_a_batch_the_database_never_takes_is_given_up_when_abandoned_or_stopping(
    caplog: pytest.LogCaptureFixture, stopping: bool, why: str
) -> None:
    caplog.set_level(logging.WARNING, logger="consumers.writers")
    projector = FakeProjector(unavailable=-1)
    stop = threading.Event()
    with Writers(projector, 1, stop) as writers:
        handed = writers.write(batch(1, 4), through=4, on_done=lambda: None)
        time.sleep(0.1)  # in its back-off
        started = time.monotonic()
        if stopping:
            stop.set()
            assert writers.next_written(wait=True) is handed
        else:
            writers.abandon()
            assert handed.outcome.done() and len(writers) == 0
        assert handed.outcome.result() is None
        assert time.monotonic() - started < 1.5, "the writer did not notice within its stop check"
    assert f"database unavailable {why}; abandoning 4 deliveries (they will be redelivered)" in caplog.text


def test_a_bug_in_the_projector_comes_back_with_its_batch() -> None:
    with Writers(BuggyProjector(), 1, threading.Event()) as writers:
        writers.write(batch(1, 1), through=1, on_done=lambda: None)
        written = writers.next_written(wait=True)
    assert written is not None
    with pytest.raises(Bug):
        written.outcome.result()


def test_telemetry_hears_of_each_written_batch() -> None:
    heard: list[tuple[Outcome, int, float]] = []
    telemetry = Telemetry([])
    telemetry.written = lambda outcome, deliveries, seconds: heard.append((outcome, deliveries, seconds))  # type: ignore[method-assign]

    with Writers(FakeProjector(), 1, threading.Event(), telemetry=telemetry) as writers:  # type: ignore[arg-type]
        writers.write(batch(1, 5), through=5, on_done=lambda: None)
        writers.next_written(wait=True)
    assert [(outcome.applied, deliveries) for outcome, deliveries, _ in heard] == [(5, 5)]
    assert heard[0][2] >= 0
