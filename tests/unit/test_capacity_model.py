"""The capacity model's arithmetic (bench.capacity_model): rates, CPU per 1,000, per core, rounds, the table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.capacity_model import (
    API,
    BROKER,
    CONSUMER,
    LOAD_GENERATOR,
    POSTGRESQL,
    POSTGRESQL_BACKGROUND,
    Capacity,
    Window,
    busy,
    combine,
    consumers_per_postgres_core,
    deltas,
    per_core,
    per_thousand,
    rate,
    total,
)


def ingest_window(processes: int = 1, seconds: float = 2.0, **cpu: float | None) -> Window:
    parts = {CONSUMER: 0.6, POSTGRESQL: 0.3, POSTGRESQL_BACKGROUND: 0.1, BROKER: 1.0}
    parts.update({name.replace("_", " "): value for name, value in cpu.items()})
    counters = {"commits": 40, "rows_written": 20_000, "wal_bytes": 5_000_000}
    return Window(processes, 10_000, seconds, parts, counters, (1000, 1000 - round(400 * seconds)))


def test_rate_is_work_per_second_and_a_window_of_no_time_has_none() -> None:
    assert rate(10_000, 2.0) == 5000
    with pytest.raises(ValueError):
        rate(10_000, 0.0)


def test_cpu_per_thousand_and_what_one_core_buys() -> None:
    assert per_thousand(0.5, 10_000) == pytest.approx(0.05)
    assert per_core(0.05) == pytest.approx(20_000)  # 50 ms of a core per 1,000 events: 20,000 events/s a core
    assert per_thousand(None, 10_000) is None and per_thousand(0.5, 0) is None
    assert per_core(None) is None and per_core(0.0) is None


@given(st.floats(min_value=0.001, max_value=1e4), st.integers(min_value=1, max_value=10**9))
def test_one_core_buys_the_work_that_costs_one_cpu_second(cpu_s: float, work: int) -> None:
    """per_core is the inverse of the cost: at that rate, a second of work costs one CPU second."""
    buys = per_core(per_thousand(cpu_s, work))
    assert buys is not None
    assert buys * cpu_s / work == pytest.approx(1.0)


def test_total_adds_what_was_measured_and_is_none_when_nothing_was() -> None:
    assert total([0.5, None, 0.25]) == 0.75
    assert total([None, None]) is None


def test_deltas_of_counters() -> None:
    assert deltas({"commits": 10, "rows_written": 5}, {"commits": 15, "rows_written": 5, "new": 3}) == {
        "commits": 5,
        "rows_written": 0,
        "new": 3,
    }
    with pytest.raises(ValueError, match="went backwards"):
        deltas({"commits": 10}, {"commits": 2})


def test_busy_is_the_share_of_the_machines_ticks_not_idle() -> None:
    assert busy((400, 100)) == pytest.approx(0.75)
    assert busy(None) is None and busy((0, 0)) is None


def test_consumers_one_postgres_core_keeps_up_with() -> None:
    """Consumer 0.06 s per 1,000 events, PostgreSQL 0.03 + 0.01: one PostgreSQL core absorbs 1.5 consumer cores."""
    window = ingest_window()
    assert window.cpu_per_thousand(CONSUMER) == pytest.approx(0.06)
    assert consumers_per_postgres_core(window) == pytest.approx(1.5)
    unmeasured = ingest_window(**{POSTGRESQL: None, POSTGRESQL_BACKGROUND: None})
    assert consumers_per_postgres_core(unmeasured) is None


def test_window_rates_per_event_and_per_second() -> None:
    window = ingest_window(seconds=2.0)
    assert window.rate == 5000
    assert window.per_second("commits") == 20
    assert window.per_unit("rows_written") == 2.0
    assert window.per_second("absent") is None and window.per_unit("absent") is None
    assert window.all_per_thousand([CONSUMER, BROKER]) == pytest.approx(0.16)


def test_rounds_combine_into_one_window_weighted_by_time() -> None:
    one = Window(1, 10_000, 1.0, {CONSUMER: 0.5, BROKER: 1.0}, {"commits": 20, "only_here": 1}, (200, 20))
    two = Window(1, 10_000, 4.0, {CONSUMER: 0.7, BROKER: None}, {"commits": 30}, (800, 380))
    both = combine([one, two])
    assert (both.work, both.seconds, both.rate) == (20_000, 5.0, 4000)
    assert both.cpu_s[CONSUMER] == pytest.approx(1.2)
    assert both.cpu_s[BROKER] is None  # unmeasured in one round: unmeasured in the sum
    assert both.counters == {"commits": 50}
    assert busy(both.ticks) == pytest.approx(0.6)  # 400 idle of 1,000 ticks
    assert combine([one, Window(1, 1, 1.0, {})]).ticks is None  # not read in one round: not in the sum
    with pytest.raises(ValueError):
        combine([])
    with pytest.raises(ValueError):
        combine([one, Window(2, 10_000, 1.0, {})])


@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=10**6), st.floats(min_value=0.01, max_value=1e3)),
        min_size=1,
        max_size=6,
    )
)
def test_a_combined_rate_lies_between_the_rounds_rates(rounds: list[tuple[int, float]]) -> None:
    windows = [Window(1, work, seconds, {}) for work, seconds in rounds]
    rates = [w.rate for w in windows]
    assert min(rates) * (1 - 1e-9) <= combine(windows).rate <= max(rates) * (1 + 1e-9)


def capacity() -> Capacity:
    return Capacity(
        events=10_000,
        jobs=2000,
        ingest=[ingest_window(1, 2.0), ingest_window(2, 1.25)],
        drain_rate=20_000.0,
        api_rows=10_000,
        api_connections=16,
        api=[
            Window(1, 4000, 4.0, {API: 1.2, POSTGRESQL: None, LOAD_GENERATOR: 2.0}, ticks=(800, 8)),
            Window(2, 6000, 4.0, {API: 1.8, POSTGRESQL: 0.06, LOAD_GENERATOR: 3.0}),
        ],
    )


def test_the_table_has_a_column_per_number_of_processes_and_a_cell_in_every_one() -> None:
    lines = capacity().table().splitlines()
    assert lines[0] == "| figure | 1 consumer / 1 API worker | 2 consumers / 2 API workers |"
    assert lines[1] == "|---|---|---|"
    assert all(line.count(" | ") == 2 for line in lines[2:])


def test_the_tables_figures() -> None:
    rows = dict(capacity().rows())
    assert rows["events/s folded (10,000 events, 2,000 jobs)"] == ["5,000", "8,000"]
    assert rows["speed-up over one consumer"] == ["1.00x", "1.60x"]
    assert rows[f"CPU s per 1,000 events: {CONSUMER}"] == ["0.060", "0.060"]
    assert rows["CPU s per 1,000 events: all of these"] == ["0.200", "0.200"]
    assert rows["machine busy while folding (every process)"] == ["80%", "50%"]
    assert rows["events/s one core buys: PostgreSQL"] == ["25,000", "25,000"]
    assert rows["events/s one core buys: all of these"] == ["5,000", "5,000"]
    assert rows["PostgreSQL commits/s"] == ["20", "32"]
    assert rows["rows written per event"] == ["2.00", "2.00"]
    assert rows["events per commit"] == ["250.00", "250.00"]
    assert rows["the queue's ceiling: bare pika drain, no database (events/s)"] == ["20,000", "—"]
    assert rows["GET by id, requests/s (10,000 jobs, 16 connections)"] == ["1,000", "1,500"]
    assert rows[f"CPU s per 1,000 GETs: {POSTGRESQL}"] == ["—", "0.010"]  # unmeasured is a dash, not a zero
    assert rows["GETs/s one core buys: tracker api"] == ["3,333", "3,333"]
    assert rows["machine busy during the GETs (every process)"] == ["99%", "—"]
