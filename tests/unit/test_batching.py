"""The consumer's group-commit decision (consumers.batching), without a broker or a clock."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.batching import IDLE_WAIT_S, WRITERS, Flush, FlushPolicy, Wait
from tracker.config import Settings

POLICY = FlushPolicy(batch_size=500, flush_s=0.010, writers=4, idle_wait_s=0.5)


def test_defaults_are_those_of_the_readme() -> None:
    """500 deliveries / 10 ms / four writers (README, "Why the consumer's batch defaults")."""
    policy = FlushPolicy.from_settings(Settings())
    assert policy == FlushPolicy(batch_size=500, flush_s=0.010, writers=4, idle_wait_s=0.5)
    assert (WRITERS, IDLE_WAIT_S) == (4, 0.5)


def test_from_settings_reads_batch_size_and_flush_ms() -> None:
    policy = FlushPolicy.from_settings(Settings(batch_size=50, flush_ms=250, prefetch=50))
    assert (policy.batch_size, policy.flush_s) == (50, 0.25)


def test_a_lone_event_waits_for_nobody() -> None:
    """Group commit: with nothing being written, what has arrived goes at once."""
    assert POLICY.decide(pending=1, writing=0, oldest_waited_s=0.0) == Flush(1)


def test_while_others_are_written_a_batch_gathers_until_its_oldest_has_waited_flush_s() -> None:
    assert POLICY.decide(pending=7, writing=1, oldest_waited_s=0.004) == Wait(pytest.approx(0.006))
    assert POLICY.decide(pending=7, writing=1, oldest_waited_s=0.010) == Flush(7)
    assert POLICY.decide(pending=7, writing=3, oldest_waited_s=0.5) == Flush(7)


def test_a_full_batch_goes_at_once_and_takes_no_more_than_a_batch() -> None:
    assert POLICY.decide(pending=500, writing=2, oldest_waited_s=0.0) == Flush(500)
    assert POLICY.decide(pending=1800, writing=3, oldest_waited_s=0.0) == Flush(500)
    assert POLICY.decide(pending=1800, writing=0, oldest_waited_s=0.0) == Flush(500)


def test_with_every_writer_busy_nothing_is_handed_over() -> None:
    assert POLICY.decide(pending=2000, writing=4, oldest_waited_s=60.0) == Wait(0.5)


def test_with_nothing_pending_the_loop_idles() -> None:
    assert POLICY.decide(pending=0, writing=0, oldest_waited_s=0.0) == Wait(0.5)
    assert POLICY.decide(pending=0, writing=2, oldest_waited_s=1e9) == Wait(0.5)


@pytest.mark.parametrize(
    "fields",
    [{"batch_size": 0}, {"writers": 0}, {"flush_s": -0.001}, {"idle_wait_s": 0.0}],
)
def test_a_policy_that_could_never_flush_or_never_wait_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FlushPolicy(**fields)


def _as_the_readme_says(policy: FlushPolicy, pending: int, writing: int, waited: float) -> Flush | Wait:
    """The rule as README states it, one case at a time: the oracle for ``decide``."""
    if pending == 0 or writing >= policy.writers:
        return Wait(policy.idle_wait_s)  # nothing to hand over, or nobody to hand it to
    if writing == 0:
        return Flush(min(pending, policy.batch_size))  # group commit: nobody to wait for
    if pending >= policy.batch_size:
        return Flush(policy.batch_size)  # a full batch
    if waited >= policy.flush_s:
        return Flush(pending)  # the oldest has waited long enough
    return Wait(policy.flush_s - waited)


policies = st.builds(
    FlushPolicy,
    batch_size=st.integers(1, 5000),
    flush_s=st.floats(0.0, 10.0),
    writers=st.integers(1, 16),
    idle_wait_s=st.floats(0.001, 5.0),
)
pending_counts = st.integers(0, 20_000)
writing_counts = st.integers(0, 20)
waits = st.floats(0.0, 100.0)


@given(policies, pending_counts, writing_counts, waits)
def test_decide_is_the_rule_of_the_readme(policy: FlushPolicy, pending: int, writing: int, waited: float) -> None:
    step = policy.decide(pending, writing, waited)
    expected = _as_the_readme_says(policy, pending, writing, waited)
    if isinstance(expected, Wait):
        assert isinstance(step, Wait)
        assert step.seconds == pytest.approx(expected.seconds)
    else:
        assert step == expected


@given(policies, pending_counts, writing_counts, waits)
def test_a_flush_is_a_batch_at_most_and_a_wait_is_bounded(
    policy: FlushPolicy, pending: int, writing: int, waited: float
) -> None:
    step = policy.decide(pending, writing, waited)
    if isinstance(step, Flush):
        assert 1 <= step.count <= min(pending, policy.batch_size)
        assert writing < policy.writers
    else:
        assert 0 < step.seconds <= max(policy.flush_s, policy.idle_wait_s)


@given(policies, st.lists(st.integers(0, 100), min_size=1, max_size=20), st.integers(1, 4))
def test_simulated_loop_keeps_writers_bounded_and_hands_everything_over(
    policy: FlushPolicy, arrivals: list[int], finish_every: int
) -> None:
    """Drive the decision as the consumer's loop does, with deliveries arriving in bursts and the
    oldest writer finishing every few turns: never more than ``writers`` batches out, none over
    ``batch_size``, and every delivery handed over once arrivals stop."""
    received = handed = turn = 0
    writing: list[int] = []
    clock = since = 0.0
    bursts = iter(arrivals)
    while (burst := next(bursts, None)) is not None or handed < received:
        turn += 1
        assert turn <= len(arrivals) + 2 * finish_every * (sum(arrivals) + 1), "the loop stopped handing over"
        if burst and received == handed:
            since = clock  # the first of the pending deliveries arrives
        received += burst or 0
        if turn % finish_every == 0 and writing:
            writing.pop(0)
        step = policy.decide(received - handed, len(writing), clock - since)
        while isinstance(step, Flush):
            assert step.count <= policy.batch_size
            writing.append(step.count)
            handed += step.count
            since = clock
            assert len(writing) <= policy.writers
            step = policy.decide(received - handed, len(writing), clock - since)
        clock += step.seconds
        assert handed <= received
