"""The capacity measurement (docs/scaling.md): what 1 and 2 consumers fold, 1 and 2 API workers serve, at what CPU.

    python -m bench --only capacity [--quick] [--docs docs/scaling.md]

Ingest: the workload of #1 is folded by one ``tracker consume`` and by two, from the same rows,
alternating (``ingest_rounds`` of each). So that two consumers start together, the consumers are
started and subscribed first while the benchmark holds an EXCLUSIVE lock on ``async_status``;
the queue is filled (each consumer takes its prefetch and waits on the lock); the clock starts
when the lock is released and stops when every event is committed. CPU is read from /proc over
the whole of it, fill included: of the consumers, of the database's backends (the benchmark's
own connections excluded), of PostgreSQL's background processes and of the RabbitMQ node that
listens on the AMQP port; PostgreSQL's commits and rows written are deltas of its statistics.
Beside them the bare pika drain of #1 (one consumer, no database): the queue's own ceiling.

API: authenticated GET by random id, as #3, from ``tracker api`` with one worker and with two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import resource
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa

from bench import capacity_model, cputime, load, workload
from bench.capacity_model import Capacity, Window
from bench.processes import READY_LINE, MeasuredChild, bench_command, free_port, tracker_command
from bench.report import Result
from bench.services import MessagesLost, QueueWatcher
from bench.testbed import Testbed
from tracker.config import Settings

APPLICATION = "tracker-bench-capacity"  # the benchmark's own connections, left out of PostgreSQL's CPU
_CONSUMERS = (1, 2)
_WORKERS = (1, 2)
_API_ROWS = 10_000  # as #3
_CONNECTIONS = 16  # as #3
_SAMPLE_S = 0.1  # how often the process groups are read while they work
_QUIET_S = 30.0  # an empty queue this long with work still undone means messages were lost
_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}
_BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum launcher")


def capacity(bed: Testbed) -> list[Result]:
    """Ingest by one consumer and by two, the bare drain, and GET by one API worker and by two."""
    scale, db = bed.scale, bed.database
    jobs, per_job = scale.ingest_jobs, scale.ingest_events // scale.ingest_jobs
    settings = bed.settings("capacity")
    db.empty()
    ids = db.seed_jobs(jobs)
    work = workload.lifecycles(ids, per_job, random.Random(8))
    broker_pid = broker_pid_of(settings.amqp_url)
    if broker_pid is None:
        bed.run.notes.append("capacity: the RabbitMQ node is not a process of this machine; its CPU is not measured")
    bed.progress.say(
        f"capacity: {len(work.bodies):,} events over {jobs:,} jobs, folded by "
        f"{' and by '.join(map(str, _CONSUMERS))} consumers, {scale.ingest_rounds} round(s)"
    )
    rounds: dict[int, list[Window]] = {n: [] for n in _CONSUMERS}
    drains: list[dict[str, Any]] = []
    with DatabaseMonitor(db.url) as monitor:
        if not monitor.local:
            bed.run.notes.append("capacity: PostgreSQL is not on this machine; its CPU is not measured")
        for round_number in range(scale.ingest_rounds):
            for consumers in _CONSUMERS if round_number % 2 == 0 else reversed(_CONSUMERS):
                _reseed(db, ids)
                window = ingest_window(bed, settings, work.bodies, consumers, monitor, broker_pid)
                rounds[consumers].append(window)
                bed.progress.say(
                    f"  {consumers} consumer(s): {window.work:,} events in {window.seconds:.2f} s = "
                    f"{window.rate:,.0f}/s; CPU s {_cpu_text(window)}"
                )
            drains.append(_bare_drain(bed, settings, work.bodies, broker_pid))
        ingest = [capacity_model.combine(rounds[n]) for n in _CONSUMERS]

        db.empty()
        api_ids = db.seed_jobs(_API_ROWS, terminal_every=2)
        token = db.add_reader(settings)
        db.analyze()
        db.dispose()
        api_rounds: dict[int, list[Window]] = {n: [] for n in _WORKERS}
        loads = []
        for round_number in range(scale.api_rounds):
            for workers in _WORKERS if round_number % 2 == 0 else reversed(_WORKERS):
                window, found = _api(bed, settings.with_(workers=workers), api_ids, token, monitor)
                api_rounds[workers].append(window)
                loads.append(found)
                bed.progress.say(
                    f"  {workers} API worker(s): {window.rate:,.0f} GETs/s, not 200: {found.not_ok}, "
                    f"errors: {found.errors}; CPU s {_cpu_text(window)}"
                )
        api = [capacity_model.combine(api_rounds[n]) for n in _WORKERS]

    drain_s = sum(d["seconds"] for d in drains)
    drain_rate = capacity_model.rate(sum(d["events"] for d in drains), drain_s) if drain_s > 0 else None
    model = Capacity(
        events=len(work.bodies),
        jobs=jobs,
        ingest=ingest,
        drain_rate=drain_rate,
        api_rows=len(api_ids),
        api_connections=_CONNECTIONS,
        api=api,
    )
    bed.run.charts.append("The capacity model (`bench/capacity.py`, `bench/capacity_model.py`):\n\n" + model.table())
    wrong = sum(found.not_ok + found.errors for found in loads)
    if wrong:
        bed.run.notes.append(f"capacity: {wrong} GETs were not answered 200")
    return [
        Result(
            "8 capacity",
            f"events/s folded by {_CONSUMERS[-1]} consumers (the same events by {_CONSUMERS[0]})",
            "events/s",
            ingest[-1].rate,
            ingest[0].rate,
            f"{_CONSUMERS[0]} consumer",
            "—",
            None,
            {
                "events": len(work.bodies),
                "jobs": jobs,
                "rounds": scale.ingest_rounds,
                "runs": {str(n): [_window_json(w) for w in rounds[n]] for n in _CONSUMERS},
                "bare_drain": drains,
                "bare_drain_events_per_s": None if drain_rate is None else round(drain_rate),
                "prefetch": settings.prefetch,
                "batch_size": settings.batch_size,
            },
        ),
        Result(
            "8 capacity",
            f"GET by id requests/s with {_WORKERS[-1]} API workers (the same load on {_WORKERS[0]})",
            "requests/s",
            api[-1].rate,
            api[0].rate,
            f"{_WORKERS[0]} API worker",
            "—",
            None,
            {
                "rows": len(api_ids),
                "connections": _CONNECTIONS,
                "tool": loads[0].tool if loads else None,
                "rounds": scale.api_rounds,
                "runs": {str(n): [_window_json(w) for w in api_rounds[n]] for n in _WORKERS},
                "not_200_or_errors": wrong,
            },
        ),
    ]


def _reseed(db: Any, ids: range) -> None:
    db.empty()
    if db.seed_jobs(len(ids)) != ids:
        raise RuntimeError("the jobs of a capacity run did not get the ids of the first")
    db.dispose()  # its backends exit, so their statistics are in before the window opens


def ingest_window(
    bed: Testbed,
    settings: Settings,
    bodies: list[bytes],
    consumers: int,
    monitor: DatabaseMonitor,
    broker_pid: int | None,
) -> Window:
    """``consumers`` consumers fold ``bodies`` from a full queue, released together; the window they took."""
    watcher = QueueWatcher(bed.broker, settings.queue)
    children: list[MeasuredChild] = []
    try:
        with monitor.gate():
            for number in range(consumers):
                child = bed.start(f"capacity-consume-{consumers}-{number}", tracker_command("consume"), settings)
                children.append(child)
            for child in children:
                child.wait_for_log(READY_LINE, timeout=60)
            meters = _ingest_meters(children, monitor, broker_pid)
            before = monitor.settled_counters()
            for meter in meters.values():
                meter.start()
            bed.broker.fill(settings, bodies, keep_below=len(bodies) + 1)  # no count check: prefetch is taken
            held = min(len(bodies), consumers * settings.prefetch)
            _wait_for(
                lambda: watcher.ready() == len(bodies) - held,
                f"{len(bodies) - held:,} of {len(bodies):,} events ready beside the consumers' prefetch",
                meters,
                children,
            )
            started, ticks = time.monotonic(), cputime.machine_ticks()
        quiet_since: float | None = None
        while True:
            ready = watcher.ready()
            now = time.monotonic()
            if ready == 0 and monitor.done(len(bodies)):
                break
            quiet_since = (quiet_since or now) if ready == 0 else None
            if quiet_since is not None and now - quiet_since > _QUIET_S:
                raise MessagesLost(f"capacity: the queue has been empty for {_QUIET_S:.0f} s and the work is not done")
            for child in children:
                child.check_alive()
            _sample(meters)
            time.sleep(0.01 if ready == 0 else 0.05)
        seconds, ticks = time.monotonic() - started, cputime.ticks_since(ticks)
        _sample(meters)
    finally:
        watcher.close()
        for child in children:
            child.stop()
    counters = capacity_model.deltas(before, monitor.settled_counters())
    return Window(
        consumers,
        len(bodies),
        seconds,
        {
            part: meter.seconds() if _measured(meter, part, monitor, broker_pid) else None
            for part, meter in meters.items()
        },
        counters,
        ticks,
    )


def _ingest_meters(
    children: list[MeasuredChild], monitor: DatabaseMonitor, broker_pid: int | None
) -> dict[str, cputime.CpuMeter]:
    return {
        capacity_model.CONSUMER: cputime.CpuMeter(lambda: _tree(children)),
        capacity_model.POSTGRESQL: cputime.CpuMeter(monitor.backend_pids),
        capacity_model.POSTGRESQL_BACKGROUND: cputime.CpuMeter(monitor.background_pids),
        capacity_model.BROKER: cputime.CpuMeter(lambda: [] if broker_pid is None else [broker_pid]),
    }


def _measured(meter: cputime.CpuMeter, part: str, monitor: DatabaseMonitor, broker_pid: int | None) -> bool:
    """Whether ``meter`` saw the part at all: a server elsewhere, or a broker restarted under a new pid, was not."""
    if part in (capacity_model.POSTGRESQL, capacity_model.POSTGRESQL_BACKGROUND):
        return monitor.local and meter.seen > 0
    if part == capacity_model.BROKER:
        return broker_pid is not None and meter.seen > 0
    return True


def _tree(children: list[MeasuredChild]) -> list[int]:
    pids = []
    for child in children:
        if child.alive:
            pids += [child.pid, *cputime.descendants(child.pid)]
    return pids


def _sample(meters: dict[str, cputime.CpuMeter]) -> None:
    for meter in meters.values():
        meter.sample()


def _wait_for(
    condition: Callable[[], bool],
    what: str,
    meters: dict[str, cputime.CpuMeter],
    children: list[MeasuredChild],
    timeout: float = 120.0,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise MessagesLost(f"capacity: waited {timeout:.0f} s for {what}")
        for child in children:
            child.check_alive()
        _sample(meters)
        time.sleep(_SAMPLE_S)


def _bare_drain(bed: Testbed, settings: Settings, bodies: list[bytes], broker_pid: int | None) -> dict[str, Any]:
    """The bare pika drain of #1 over the same events: its rate by its own clock, and the broker's CPU."""
    broker = cputime.CpuMeter(lambda: [] if broker_pid is None else [broker_pid]).start()
    bed.broker.fill(settings, bodies)
    child = bed.start(
        "capacity-bare-drain",
        bench_command(
            "references",
            "drain",
            "--amqp-url",
            settings.amqp_url,
            "--queue",
            settings.queue,
            "--count",
            str(len(bodies)),
            "--prefetch",
            str(settings.prefetch),
            "--ack-every",
            str(settings.batch_size),
        ),
        settings,
        capture_stdout=True,
    )
    own = orjson.loads(child.stdout(timeout=300).strip().splitlines()[-1])
    broker.sample()
    seconds = own["last_at"] - own["first_at"]
    cpu = broker.seconds() if broker_pid is not None else None
    bed.progress.say(f"  bare pika drain: {own['events'] / seconds:,.0f}/s by its own clock")
    return {
        "events": own["events"],
        "seconds": round(seconds, 3),
        "broker_cpu_s_per_1000_events": None if cpu is None else round(cpu * 1000 / own["events"], 4),
    }


def _api(
    bed: Testbed, settings: Settings, ids: range, token: str, monitor: DatabaseMonitor
) -> tuple[Window, load.HttpLoad]:
    """GETs of random ids from ``tracker api`` with ``settings.workers`` workers, as #3 loads it."""
    port = free_port()
    server = bed.start(
        f"capacity-api-{settings.workers}", tracker_command("api"), settings.with_(bind=f"127.0.0.1:{port}")
    )
    try:
        server.wait_for_port(port)
        load.http_load(port, ids, token, 2.0, _CONNECTIONS, 2, bed.out_dir)  # warm-up: every worker built, pools
        meters = {
            capacity_model.API: cputime.CpuMeter(lambda: [server.pid, *cputime.descendants(server.pid)]).start(),
            capacity_model.POSTGRESQL: cputime.CpuMeter(monitor.backend_pids).start(),
        }
        children_before, ticks = _children_cpu(), cputime.machine_ticks()
        found = load.http_load(port, ids, token, bed.scale.api_s, _CONNECTIONS, 2, bed.out_dir)
        generator, ticks = _children_cpu() - children_before, cputime.ticks_since(ticks)
        _sample(meters)
    finally:
        server.stop()
    seconds = found.requests / found.requests_per_s if found.requests_per_s else bed.scale.api_s
    cpu: dict[str, float | None] = {
        capacity_model.API: meters[capacity_model.API].seconds(),
        capacity_model.POSTGRESQL: meters[capacity_model.POSTGRESQL].seconds() if monitor.local else None,
        capacity_model.LOAD_GENERATOR: generator,
    }
    return Window(settings.workers, found.requests, seconds, cpu, ticks=ticks), found


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def broker_pid_of(amqp_url: str) -> int | None:
    """The RabbitMQ node's process, when it listens on this machine on the URL's port."""
    url = urllib.parse.urlsplit(amqp_url.split(",")[0].strip())
    if (url.hostname or "") not in _LOCAL_HOSTS:
        return None
    pid = cputime.listening_pid(url.port or (5671 if url.scheme == "amqps" else 5672))
    return pid if pid is not None and (cputime.comm(pid) or "").startswith("beam") else None


def _cpu_text(window: Window) -> str:
    return ", ".join(f"{part}: {'—' if cpu is None else f'{cpu:.2f}'}" for part, cpu in window.cpu_s.items())


def _window_json(window: Window) -> dict[str, Any]:
    return {
        "processes": window.processes,
        "work": window.work,
        "seconds": round(window.seconds, 3),
        "per_s": round(window.rate),
        "cpu_s": {part: None if cpu is None else round(cpu, 3) for part, cpu in window.cpu_s.items()},
        "machine_busy": None if (share := capacity_model.busy(window.ticks)) is None else round(share, 3),
        **({"counters": dict(window.counters)} if window.counters else {}),
    }


@dataclasses.dataclass
class DatabaseMonitor:
    """Connections of the benchmark's own to the run's database: statistics, the start gate, completion.

    Their application_name (APPLICATION) keeps their backends out of PostgreSQL's CPU.
    """

    url: str
    local: bool = False

    def __enter__(self) -> DatabaseMonitor:
        engine = sa.create_engine(sa.make_url(self.url))  # opens nothing: only its connect arguments are used
        _, params = engine.dialect.create_connect_args(engine.url)
        self._params = {**params, "application_name": APPLICATION}
        self._stats = psycopg.connect(**self._params, autocommit=True)
        own = self._stats.execute("SELECT pg_backend_pid()").fetchone()
        host = str(params.get("host") or "")
        self.local = (
            (host in _LOCAL_HOSTS or host.startswith("/"))
            and own is not None
            and (cputime.comm(int(own[0])) == "postgres")
        )
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stats.close()

    @contextlib.contextmanager
    def gate(self) -> Iterator[None]:
        """Hold an EXCLUSIVE lock on async_status (reads go on, no fold can start) until the block ends."""
        with psycopg.connect(**self._params) as conn:
            conn.execute("LOCK TABLE async_status IN EXCLUSIVE MODE")
            yield
            conn.commit()

    def backend_pids(self) -> list[int]:
        return self._pids(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type IN ('client backend', 'autovacuum worker') "
            "AND coalesce(application_name, '') <> %s",
            (APPLICATION,),
        )

    def background_pids(self) -> list[int]:
        return self._pids("SELECT pid FROM pg_stat_activity WHERE backend_type = ANY(%s)", (list(_BACKGROUND),))

    def _pids(self, query: str, params: tuple[object, ...]) -> list[int]:
        if not self.local:
            return []
        return [int(row[0]) for row in self._stats.execute(query, params).fetchall()]

    def counters(self) -> dict[str, int]:
        """Commits in the database, rows written to its tables (all, and by table), WAL of the whole server, so far."""
        row = self._stats.execute(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
        ).fetchone()
        assert row is not None
        tables = {
            f"rows_written:{name}": int(written)
            for name, written in self._stats.execute(
                "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables"
            ).fetchall()
        }
        return {"commits": int(row[0]), "rows_written": sum(tables.values()), "wal_bytes": int(row[1]), **tables}

    def settled_counters(self, timeout: float = 15.0) -> dict[str, int]:
        """The counters once the rows written stop moving: backends report their statistics up to a second late."""
        deadline = time.monotonic() + timeout
        last = self.counters()
        while True:
            time.sleep(1.2)
            now = self.counters()
            if now["rows_written"] == last["rows_written"] or time.monotonic() > deadline:
                return now
            last = now

    def done(self, events: int) -> bool:
        """Every event is in the timeline and no job is PENDING: the consumers have committed all of it."""
        row = self._stats.execute(
            "SELECT (SELECT count(*) FROM async_status_event) = %s "
            "AND NOT EXISTS (SELECT 1 FROM async_status WHERE status = 'PENDING')",
            (events,),
        ).fetchone()
        return bool(row and row[0])
