"""StatusProjector against a fake store: bad input, unknown jobs, and a batch the database refuses."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.status import DeadLetter, Delivery, StatusProjector
from tracker.errors import StoreRefused, StoreUnavailable
from tracker.events import Event, new_event
from tracker.model import Applied
from tracker.store import JobStore

KNOWN_JOBS = frozenset(range(1, 100))


class RefusingStore(JobStore):
    """Commits every batch except one that holds an event of ``refused`` (all or nothing, as a
    transaction would); a job outside ``KNOWN_JOBS`` has no row."""

    def __init__(self, refused: frozenset[str] = frozenset(), unavailable: bool = False) -> None:
        self.refused = refused
        self.unavailable = unavailable
        self.committed: list[Event] = []
        self.attempts: list[int] = []  # the size of each batch it was asked to apply

    def apply(self, events: Sequence[Event]) -> Applied:
        self.attempts.append(len(events))
        if self.unavailable:
            raise StoreUnavailable("OperationalError: connection refused")
        if any(event.event_id in self.refused for event in events):
            raise StoreRefused("CheckViolation", 'new row violates check constraint "no_poison"')
        missing = frozenset(event.job_id for event in events) - KNOWN_JOBS
        self.committed.extend(event for event in events if event.job_id not in missing)
        return Applied(changed_jobs=len(events), missing_jobs=missing)


def delivery(tag: int, event: Event) -> Delivery:
    return Delivery(tag=tag, body=orjson.dumps(event.to_wire()), routing_key=f"job.{event.type}")


def batch_of(count: int) -> tuple[list[Event], list[Delivery]]:
    events = [new_event(1 + n % 10, "progress", f"step {n}", seq=n) for n in range(count)]
    return events, [delivery(tag, event) for tag, event in enumerate(events, start=1)]


def test_one_refused_event_among_many_is_dead_lettered_alone_and_the_rest_applied() -> None:
    events, deliveries = batch_of(16)
    store = RefusingStore(refused=frozenset({events[11].event_id}))

    outcome = StatusProjector(store).handle(deliveries)

    assert outcome.dead == (DeadLetter(deliveries[11], "database refused the event: CheckViolation"),)
    assert outcome.applied == 15
    assert sorted(e.event_id for e in store.committed) == sorted(e.event_id for i, e in enumerate(events) if i != 11)
    # Halved until the refused event stood alone: 16, 8, 4, 2 around it, then the event by itself.
    assert store.attempts[0] == 16 and 1 in store.attempts
    assert len(store.attempts) <= 1 + 2 * 4


def test_a_batch_the_store_takes_is_applied_in_one_call() -> None:
    events, deliveries = batch_of(8)
    store = RefusingStore()

    outcome = StatusProjector(store).handle(deliveries)

    assert (outcome.applied, outcome.dead, store.attempts) == (8, (), [8])
    assert store.committed == events


def test_bad_input_unknown_jobs_and_a_refused_event_are_each_dead_lettered_with_their_reason() -> None:
    events, deliveries = batch_of(6)
    unknown = new_event(12345, "succeeded")
    deliveries += [Delivery(tag=7, body=b"{not json"), delivery(8, unknown)]
    store = RefusingStore(refused=frozenset({events[2].event_id}))

    outcome = StatusProjector(store).handle(deliveries)

    reasons = {dead.delivery.tag: dead.reason for dead in outcome.dead}
    assert set(reasons) == {3, 7, 8}
    assert reasons[3] == "database refused the event: CheckViolation"
    assert reasons[8] == "job 12345 does not exist"
    assert reasons[7]  # the parser's own words
    assert outcome.applied == 5


def test_an_unavailable_store_raises_for_the_caller_to_retry() -> None:
    _, deliveries = batch_of(4)
    store = RefusingStore(unavailable=True)

    with pytest.raises(StoreUnavailable):
        StatusProjector(store).handle(deliveries)
    assert store.committed == []


@given(st.integers(1, 120), st.data())
def test_any_refused_events_are_dead_lettered_and_only_they(size: int, data: st.DataObject) -> None:
    events, deliveries = batch_of(size)
    refused = data.draw(st.sets(st.integers(0, size - 1), max_size=size), label="refused positions")
    store = RefusingStore(refused=frozenset(events[i].event_id for i in refused))

    outcome = StatusProjector(store).handle(deliveries)

    assert sorted(dead.delivery.tag - 1 for dead in outcome.dead) == sorted(refused)
    assert {dead.reason for dead in outcome.dead} <= {"database refused the event: CheckViolation"}
    assert outcome.applied == size - len(refused)
    expected = [e.event_id for i, e in enumerate(events) if i not in refused]
    assert sorted(e.event_id for e in store.committed) == sorted(expected)  # each once
