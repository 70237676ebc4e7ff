"""The capacity model's arithmetic (pure): rates, CPU per 1,000, what a core buys, the table of docs/scaling.md."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

# The parts whose CPU an ingest spends, as the table names them, in its order.
CONSUMER = "tracker consume"
POSTGRESQL = "PostgreSQL backends of the database"
POSTGRESQL_BACKGROUND = "PostgreSQL background processes (whole server)"
BROKER = "RabbitMQ node"
INGEST_PARTS = (CONSUMER, POSTGRESQL, POSTGRESQL_BACKGROUND, BROKER)
# And a GET's.
API = "tracker api (master and workers)"
LOAD_GENERATOR = "the load generator"
API_PARTS = (API, POSTGRESQL, LOAD_GENERATOR)


def rate(work: int, seconds: float) -> float:
    """Work done per second; raises ValueError for a window of no time."""
    if seconds <= 0:
        raise ValueError(f"a window of {seconds} s has no rate")
    return work / seconds


def per_thousand(cpu_s: float | None, work: int) -> float | None:
    """CPU seconds per 1,000 units of work (None when the CPU was not measured or there was no work)."""
    if cpu_s is None or work <= 0:
        return None
    return cpu_s * 1000 / work


def per_core(cpu_per_thousand: float | None) -> float | None:
    """Units of work per second that one whole core buys at this cost (None when unmeasured or free)."""
    if cpu_per_thousand is None or cpu_per_thousand <= 0:
        return None
    return 1000 / cpu_per_thousand


def total(values: Sequence[float | None]) -> float | None:
    """The sum of the measured values; None when none was measured."""
    measured = [value for value in values if value is not None]
    return sum(measured) if measured else None


def deltas(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """``after - before`` for every counter of ``after``; raises ValueError if one went backwards (a reset)."""
    found = {}
    for name, value in after.items():
        change = value - before.get(name, 0)
        if change < 0:
            raise ValueError(f"the counter {name} went backwards ({before.get(name)} -> {value}): was it reset?")
        found[name] = change
    return found


def busy(ticks: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time in use, from the (all, idle) ticks elapsed (/proc/stat)."""
    if ticks is None or ticks[0] <= 0:
        return None
    return 1 - ticks[1] / ticks[0]


@dataclasses.dataclass(frozen=True)
class Window:
    """One timed run: ``work`` events (or requests) in ``seconds``, the CPU each part spent, and counters.

    ``cpu_s`` maps a part (the names above) to its CPU seconds in the window, None when that part
    could not be measured (not on this machine). ``counters`` are deltas of PostgreSQL's statistics
    (``commits``, ``rows_written``, ``wal_bytes``) over the same window. ``ticks`` are the whole
    machine's CPU ticks (all, idle) elapsed over the timed part, every process's.
    """

    processes: int  # consumers or API workers
    work: int
    seconds: float
    cpu_s: Mapping[str, float | None]
    counters: Mapping[str, int] = dataclasses.field(default_factory=dict)
    ticks: tuple[int, int] | None = None

    @property
    def rate(self) -> float:
        return rate(self.work, self.seconds)

    def cpu_per_thousand(self, part: str) -> float | None:
        return per_thousand(self.cpu_s.get(part), self.work)

    def all_per_thousand(self, parts: Sequence[str]) -> float | None:
        return per_thousand(total([self.cpu_s.get(part) for part in parts]), self.work)

    def per_second(self, counter: str) -> float | None:
        return None if counter not in self.counters else rate(self.counters[counter], self.seconds)

    def per_unit(self, counter: str) -> float | None:
        return None if counter not in self.counters or self.work <= 0 else self.counters[counter] / self.work


def combine(windows: Sequence[Window]) -> Window:
    """Several rounds of the same run as one: work, seconds, CPU and counters added up.

    Its rates are then the rounds' rates weighted by their time. A part unmeasured in any round
    is unmeasured in the sum. Raises ValueError for no rounds or rounds of different sizes.
    """
    if not windows:
        raise ValueError("no rounds to combine")
    if len({w.processes for w in windows}) != 1:
        raise ValueError("rounds with different numbers of processes cannot be combined")
    parts = {part for w in windows for part in w.cpu_s}
    cpu: dict[str, float | None] = {}
    for part in sorted(parts):
        values = [w.cpu_s.get(part) for w in windows]
        cpu[part] = None if any(v is None for v in values) else sum(v for v in values if v is not None)
    counters = {
        name: sum(w.counters[name] for w in windows) for name in set.intersection(*(set(w.counters) for w in windows))
    }
    ticks = [w.ticks for w in windows]
    return Window(
        windows[0].processes,
        sum(w.work for w in windows),
        sum(w.seconds for w in windows),
        cpu,
        counters,
        None if None in ticks else (sum(t[0] for t in ticks if t), sum(t[1] for t in ticks if t)),
    )


def postgres_cpu_per_thousand(window: Window) -> float | None:
    """PostgreSQL's whole cost per 1,000 events: its backends and (measured server-wide) its background processes."""
    return window.all_per_thousand([POSTGRESQL, POSTGRESQL_BACKGROUND])


def consumers_per_postgres_core(window: Window) -> float | None:
    """How many consumers, each with a core of its own, one PostgreSQL core keeps up with.

    Each event costs the consumer c and PostgreSQL p CPU seconds; a core of PostgreSQL then
    absorbs what c/p consumer cores produce. It assumes both sides stay CPU-bound as they grow.
    """
    consumer, postgres = window.cpu_per_thousand(CONSUMER), postgres_cpu_per_thousand(window)
    if consumer is None or postgres is None or postgres <= 0:
        return None
    return consumer / postgres


@dataclasses.dataclass(frozen=True)
class Capacity:
    """What the capacity measurement found: ingest by 1 and by n consumers, the bare drain, GETs by 1 and n workers."""

    events: int
    jobs: int
    ingest: Sequence[Window]  # by number of consumers, fewest first
    drain_rate: float | None  # the bare pika drain of the same events: the queue's ceiling for one consumer
    api_rows: int
    api_connections: int
    api: Sequence[Window]  # by number of workers, fewest first

    def rows(self) -> list[tuple[str, list[str]]]:
        """The table's rows: a label and one cell per column (ingest and API runs side by side)."""
        ingest, api = self.ingest, self.api
        first = ingest[0].rate if ingest else None
        rows: list[tuple[str, list[str]]] = [
            (f"events/s folded ({self.events:,} events, {self.jobs:,} jobs)", [_number(w.rate) for w in ingest]),
            ("speed-up over one consumer", [_times(w.rate / first if first else None) for w in ingest]),
        ]
        rows += [
            (f"CPU s per 1,000 events: {part}", [_cpu(w.cpu_per_thousand(part)) for w in ingest])
            for part in INGEST_PARTS
        ]
        rows += [
            ("CPU s per 1,000 events: all of these", [_cpu(w.all_per_thousand(INGEST_PARTS)) for w in ingest]),
            ("machine busy while folding (every process)", [_percent(busy(w.ticks)) for w in ingest]),
            (
                "events/s one core buys: tracker consume",
                [_number(per_core(w.cpu_per_thousand(CONSUMER))) for w in ingest],
            ),
            ("events/s one core buys: PostgreSQL", [_number(per_core(postgres_cpu_per_thousand(w))) for w in ingest]),
            ("events/s one core buys: RabbitMQ", [_number(per_core(w.cpu_per_thousand(BROKER))) for w in ingest]),
            (
                "events/s one core buys: all of these",
                [_number(per_core(w.all_per_thousand(INGEST_PARTS))) for w in ingest],
            ),
            (
                "consumers (a core each) one PostgreSQL core keeps up with",
                [_fraction(consumers_per_postgres_core(w)) for w in ingest],
            ),
            ("PostgreSQL commits/s", [_number(w.per_second("commits")) for w in ingest]),
            (
                "PostgreSQL rows written/s (inserted, updated, deleted)",
                [_number(w.per_second("rows_written")) for w in ingest],
            ),
            ("rows written per event", [_fraction(w.per_unit("rows_written")) for w in ingest]),
            ("events per commit", [_fraction(_inverse(w.per_unit("commits"))) for w in ingest]),
            ("WAL bytes per event (whole server)", [_number(w.per_unit("wal_bytes")) for w in ingest]),
            (
                "the queue's ceiling: bare pika drain, no database (events/s)",
                [_number(self.drain_rate)] + ["—"] * (len(ingest) - 1),
            ),
            (
                f"GET by id, requests/s ({self.api_rows:,} jobs, {self.api_connections} connections)",
                [_number(w.rate) for w in api],
            ),
        ]
        rows += [(f"CPU s per 1,000 GETs: {part}", [_cpu(w.cpu_per_thousand(part)) for w in api]) for part in API_PARTS]
        rows.append(("machine busy during the GETs (every process)", [_percent(busy(w.ticks)) for w in api]))
        rows.append(("GETs/s one core buys: tracker api", [_number(per_core(w.cpu_per_thousand(API))) for w in api]))
        return rows

    def table(self) -> str:
        """The capacity model as one markdown table: a column per number of consumers (and of API workers)."""
        width = max(len(self.ingest), len(self.api))
        heads = [f"{n + 1} consumer{'s' if n else ''} / {n + 1} API worker{'s' if n else ''}" for n in range(width)]
        lines = [f"| figure | {' | '.join(heads)} |", f"|---|{'---|' * width}"]
        for label, cells in self.rows():
            padded = cells + ["—"] * (width - len(cells))
            lines.append(f"| {label} | {' | '.join(padded)} |")
        return "\n".join(lines)


def _inverse(value: float | None) -> float | None:
    return None if value is None or value <= 0 else 1 / value


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _fraction(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def _cpu(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"
