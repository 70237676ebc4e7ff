"""The merge rule: incremental folds agree with SPEC §3 and §11 (``tests.oracle``), in any order and batching."""

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
    type: str = "progress",
    message: str | None = None,
    at_us: int = 0,
    seq: int = 0,
    event_id: str | None = None,
    progress: float | None = None,
    outcome: object = None,
) -> Event:
    """An event of job 1; ``outcome`` is the result of a succeeded event, or the (code, details)
    of a failed one's error, and is dropped on any other type."""
    result = outcome if type == "succeeded" else None
    code, details = outcome if type == "failed" and isinstance(outcome, tuple) else (None, None)
    return new_event(
        1,
        type,
        message,
        seq=seq,
        occurred_at=START + dt.timedelta(microseconds=at_us),
        event_id=event_id,
        progress=progress,
        result=result,
        error_code=code,
        error_details=details,
    )


OUTCOMES = st.one_of(
    st.none(),
    st.sampled_from([{"rows": 3}, [1, "two"], "done", 0, ("lost", None), ("boom", {"at": [1, 2]}), ("timeout", 5)]),
)
events_strategy = st.builds(
    event,
    type=st.sampled_from(["progress", "progress", "succeeded", "failed", "cancel_requested"]),
    message=st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])),
    # a narrow range of instants and seqs, so ties on time and seq are common
    at_us=st.integers(min_value=-2, max_value=4),
    seq=st.integers(min_value=0, max_value=2),
    event_id=st.uuids().map(str),
    progress=st.one_of(st.none(), st.sampled_from([0, 12.5, 50, 100])),
    outcome=OUTCOMES,
)


class MemoryHistory:
    """What the store keeps of past folds, in memory."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def remember(self, state: merge.JobState, batch: list[Event]) -> None:
        self.events += merge.to_remember(state, batch)

    def __call__(self, limit: merge.Key) -> merge.Recalled:
        messages = [merge.MessageMark(merge.key_of(e), e.message) for e in self.events if e.message is not None]
        progresses = [merge.ProgressMark(merge.key_of(e), e.progress) for e in self.events if e.progress is not None]
        return merge.Recalled(
            max((m for m in messages if m.key <= limit), default=None),
            max((m for m in progresses if m.key <= limit), default=None),
        )


def fold_in_batches(batches: list[list[Event]], initial: str | None = "created") -> merge.JobState:
    state = merge.JobState(START, initial)
    history = MemoryHistory()
    for batch in batches:
        state = merge.merge(state, batch, history)
        history.remember(state, batch)
    return state


def row(state: merge.JobState) -> oracle.Row:
    return oracle.as_row(state)


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


# ---- SPEC §11: progress, result, error, cancel_requested_at


def test_a_late_earlier_terminal_restores_the_progress_before_it():
    # As for the message: the kept progress (30, t=3) leaves R, and only history holds 10 (t=1).
    p1, p3 = event("progress", progress=10, at_us=1), event("progress", progress=30, at_us=3)
    t2 = event("failed", at_us=2)
    state = fold_in_batches([[p1], [p3], [t2]])
    assert (state.progress, state.message) == (10, "created")
    assert fold_in_batches([[p1, p3]]).progress == 30


def test_progress_null_or_absent_keeps_the_previous_and_any_type_may_carry_one():
    state = fold_in_batches([[event("progress", progress=40, at_us=1), event("progress", "note", at_us=2)]])
    assert state.progress == 40
    done = event("succeeded", progress=100, at_us=3, outcome={"rows": 3})
    # the terminal event's own progress is the latest in R, whatever comes late before it or after
    assert fold_in_batches([[done], [event("progress", progress=5, at_us=2)]]).progress == 100
    assert fold_in_batches([[event("progress", progress=5, at_us=4)], [done]]).progress == 100
    silent = event("succeeded", at_us=3)
    assert fold_in_batches([[silent], [event("progress", progress=5, at_us=2)]]).progress == 5


def test_result_and_error_travel_with_the_earliest_terminal_event():
    success = event("succeeded", at_us=5, outcome={"rows": 3})
    failure = event("failed", at_us=2, outcome=("timeout", {"limit_s": 60}))
    state = fold_in_batches([[success]])
    assert (state.result_json, state.error_code) == ('{"rows":3}', None)
    state = fold_in_batches([[success], [failure]])
    assert (state.status, state.result_json, state.error_code, state.error_details_json) == (
        merge.FAILED,
        None,
        "timeout",
        '{"limit_s":60}',
    )
    # a later terminal event changes none of it
    assert fold_in_batches([[failure], [success]]) == state


def test_a_terminal_event_without_an_outcome_shows_none():
    bare = fold_in_batches([[event("failed", at_us=1)], [event("succeeded", at_us=2, outcome=[1])]])
    assert (bare.status, bare.result_json, bare.error_code) == (merge.FAILED, None, None)


def test_cancel_requested_is_the_earliest_in_r_and_ends_nothing():
    first, second = event("cancel_requested", "stop", at_us=1), event("cancel_requested", "stop!", at_us=3)
    state = fold_in_batches([[second], [first]])
    assert (state.status, state.message, state.cancel_requested_at) == (
        merge.PENDING,
        "stop!",
        START + dt.timedelta(microseconds=1),
    )
    # a terminal event between them leaves the first; one before both takes it away, with no history
    assert fold_in_batches([[second, first], [event("failed", at_us=2)]]).cancel_requested_at == first.occurred_at
    gone = fold_in_batches([[second], [first], [event("succeeded", at_us=0)]])
    assert gone.cancel_requested_at is None
    # after the end it changes nothing
    assert fold_in_batches([[event("failed", at_us=0)], [first]]).cancel_requested_at is None


def test_the_oracle_reads_the_words_of_section_11():
    at = "2026-01-01T00:00:00.000001Z"
    base = {"event_id": "a0000000-0000-0000-0000-000000000000", "type": "progress", "occurred_at": at}
    later = "2026-01-01T00:00:00.000002Z"
    events = [
        {**base, "progress": 10},
        {**base, "event_id": "b0000000-0000-0000-0000-000000000000", "occurred_at": later, "progress": 20},
        {**base, "event_id": "c0000000-0000-0000-0000-000000000000", "type": "cancel_requested", "occurred_at": later},
        {
            **base,
            "event_id": "d0000000-0000-0000-0000-000000000000",
            "type": "failed",
            "occurred_at": later,
            "error": {"code": "lost", "details": None, "extra": 1},
        },
    ]
    row = oracle.expected_row(START, None, events)
    assert (row.status, row.progress, row.result, row.error) == ("FAILED", 20, None, {"code": "lost"})
    assert row.cancel_requested_at == START + dt.timedelta(microseconds=2)
    ok = {**base, "event_id": "a1000000-0000-0000-0000-000000000000", "type": "succeeded", "result": [1]}
    assert oracle.expected_row(START, None, [ok, *events]).result == [1]
