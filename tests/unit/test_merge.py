"""The merge rule: incremental folds agree with SPEC §3 (``tests.oracle``), in any order and batching."""

from __future__ import annotations

import datetime as dt
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from tests import oracle
from tracker import merge
from tracker.events import Event, new_event

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def event(
    type: str = "progress", message: str | None = None, at_us: int = 0, seq: int = 0, event_id: str | None = None
) -> Event:
    return new_event(1, type, message, seq=seq, occurred_at=START + dt.timedelta(microseconds=at_us), event_id=event_id)


events_strategy = st.builds(
    event,
    type=st.sampled_from(["progress", "progress", "succeeded", "failed"]),
    message=st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])),
    # a narrow range of instants and seqs, so ties on time and seq are common
    at_us=st.integers(min_value=-2, max_value=4),
    seq=st.integers(min_value=0, max_value=2),
    event_id=st.uuids().map(str),
)


class MemoryHistory:
    """What the store keeps of past folds, in memory."""

    def __init__(self) -> None:
        self.marks: list[merge.MessageMark] = []

    def remember(self, state: merge.JobState, batch: list[Event]) -> None:
        for e in merge.to_remember(state, batch):
            assert e.message is not None
            self.marks.append(merge.MessageMark(merge.key_of(e), e.message))

    def __call__(self, limit: merge.Key) -> merge.MessageMark | None:
        return max((m for m in self.marks if m.key <= limit), default=None)


def fold_in_batches(batches: list[list[Event]], initial: str | None = "created") -> merge.JobState:
    state = merge.JobState(START, initial)
    history = MemoryHistory()
    for batch in batches:
        state = merge.merge(state, batch, history)
        history.remember(state, batch)
    return state


def row(state: merge.JobState) -> oracle.Row:
    return oracle.Row(state.status, state.message, state.end_time)


def spec_row(events: list[Event], initial: str | None = "created") -> oracle.Row:
    return oracle.expected_row(START, initial, [e.to_wire() for e in events])


@settings(max_examples=1500, deadline=None)
@given(
    distinct=st.lists(events_strategy, min_size=0, max_size=8, unique_by=lambda e: e.event_id),
    data=st.data(),
)
def test_any_order_any_duplicates_any_batching_gives_the_row_of_the_spec(distinct, data):
    expected = spec_row(distinct)
    in_order = sorted(distinct, key=lambda e: oracle.sort_key(e.to_wire()))
    assert row(fold_in_batches([[e] for e in in_order])) == expected
    duplicated = distinct + data.draw(st.lists(st.sampled_from(distinct), max_size=8) if distinct else st.just([]))
    shuffled = data.draw(st.permutations(duplicated))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(shuffled)), max_size=len(shuffled))))
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    assert row(fold_in_batches(batches)) == expected
    assert row(merge.replay(START, "created", duplicated)) == expected


def test_no_events_is_pending_with_the_creation_message():
    state = fold_in_batches([])
    assert row(state) == oracle.Row("PENDING", "created", None)


def test_events_after_the_first_terminal_change_nothing():
    done = event("succeeded", "done", at_us=10)
    later = [event("failed", "boom", at_us=20), event("progress", "late note", at_us=30)]
    assert row(fold_in_batches([[done], later])) == oracle.Row(
        "SUCCEEDED", "done", START + dt.timedelta(microseconds=10)
    )


def test_a_late_earlier_terminal_wins_and_restores_the_message_before_it():
    # progress "p1" (t=1), then a later progress "p3" (t=3) arrives first, then the terminal at
    # t=2 with no message: the message must fall back to p1, which only history still holds.
    p1, p3 = event("progress", "p1", at_us=1), event("progress", "p3", at_us=3)
    t2 = event("failed", None, at_us=2)
    state = fold_in_batches([[p1], [p3], [t2]])
    assert row(state) == oracle.Row("FAILED", "p1", START + dt.timedelta(microseconds=2))


def test_end_time_is_never_before_start_time():
    early = event("succeeded", None, at_us=-5_000_000)
    state = fold_in_batches([[early]])
    assert state.end_time == START


def test_seq_then_event_id_break_ties_on_time():
    a = event("succeeded", "by seq 0", at_us=0, seq=0, event_id=str(uuid.UUID(int=2)))
    b = event("failed", "by seq 1", at_us=0, seq=1, event_id=str(uuid.UUID(int=1)))
    assert fold_in_batches([[b, a]]).status == merge.SUCCEEDED
    c = event("failed", "lower id", at_us=0, seq=0, event_id=str(uuid.UUID(int=1)))
    assert fold_in_batches([[a, c]]).status == merge.FAILED


def test_message_null_keeps_the_previous_message():
    state = fold_in_batches([[event("progress", "working", at_us=1), event("progress", None, at_us=2)]])
    assert state.message == "working"


def test_creation_message_none_stays_none_until_an_event_says_something():
    assert fold_in_batches([[event("progress", None)]], initial=None).message is None


def test_the_oracle_reads_the_words_of_the_spec():
    """Absent seq is 0; event_id orders as lowercase text; occurred_at compares as an instant."""
    at = "2026-01-01T00:00:00.000001Z"
    same_instant = "2026-01-01T02:00:00.000001+02:00"
    upper = {"event_id": "B0000000-0000-0000-0000-000000000000", "type": "failed", "occurred_at": at, "seq": 0}
    lower = {"event_id": "a0000000-0000-0000-0000-000000000000", "type": "succeeded", "occurred_at": same_instant}
    assert oracle.expected_row(START, None, [upper, lower]).status == "SUCCEEDED"
    later_seq = {**lower, "seq": 1}
    assert oracle.expected_row(START, None, [upper, later_seq]).status == "FAILED"
    assert oracle.expected_row(START, None, [upper]).end_time == START + dt.timedelta(microseconds=1)
    assert oracle.expected_row(START + dt.timedelta(days=1), None, [upper]).end_time == START + dt.timedelta(days=1)
