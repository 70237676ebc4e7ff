"""Where the CPU of an ingest goes: the tracker's own consumer drains a full queue in this process.

    python -m bench.anatomy [--events 100000] [--store real|parse|none] [--set FIELD=VALUE ...]

The queue is filled as for measurement #1 (four progress reports and a terminal event per job),
then ``consumers.amqp.Consumer`` drains it here, so that its threads can be told apart, with
the store of ``--store``: ``real`` folds into PostgreSQL as ``tracker consume`` does; ``parse``
only parses each body (what the store costs, by difference); ``none`` does nothing (what pika
and the loop cost, to hold beside the bare drain of #1). Prints one JSON object: events/s, CPU
per event of the connection's thread, the writer threads, the PostgreSQL and RabbitMQ server
processes (read from /proc, so both must run on this machine), and how busy the machine was.
docs/performance.md reads #1 with it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import pathlib
import random
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Sequence

from bench import processes, workload
from bench.services import BenchBroker, BenchDatabase
from bench.testbed import DEFAULT_AMQP_URL, settings_changes
from consumers.amqp import Consumer
from consumers.status import Delivery, Outcome, StatusProjector
from tracker import events
from tracker.config import ConfigError, Settings
from tracker.store import make_engine, open_job_store

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/tracker_bench_anatomy"
_SERVERS = {"postgresql": ("postgres",), "rabbitmq": ("beam.smp", "beam")}  # process names, as /proc/*/comm


class _ParseOnly:
    """A projector that parses every body and stores nothing."""

    def handle(self, deliveries: Sequence[Delivery]) -> Outcome:
        for delivery in deliveries:
            events.parse(delivery.body, delivery.content_type)
        return Outcome(applied=len(deliveries), dead=())


class _Nothing:
    """A projector that takes every delivery as applied at once."""

    def handle(self, deliveries: Sequence[Delivery]) -> Outcome:
        return Outcome(applied=len(deliveries), dead=())


def settings_for(database: BenchDatabase, broker: BenchBroker, **changes: object) -> Settings:
    """The consumer's settings against ``database`` and ``broker``: names of the run's own, a fresh secret."""
    return Settings(database_url=database.url, amqp_url=broker.url, secret=secrets.token_urlsafe(48)).with_(
        **broker.names("anatomy"), **changes
    )


def measure(
    settings: Settings, count: int, store: str, database: BenchDatabase, broker: BenchBroker
) -> dict[str, object]:
    """Fill the queue with ``count`` events, drain it with the consumer, and say where the CPU went."""
    database.recreate()
    ids = database.seed_jobs(max(count // workload.EVENTS_PER_JOB, 1))
    bodies = workload.lifecycles(ids, workload.EVENTS_PER_JOB, random.Random(1)).bodies[:count]
    broker.declare(settings)
    broker.fill(settings, bodies)
    engine = make_engine(settings.database_url, pool_pre_ping=False)
    projector = {"real": lambda: StatusProjector(open_job_store(engine)), "parse": _ParseOnly, "none": _Nothing}[
        store
    ]()
    drained = threading.Event()
    taken = 0

    def on_batch(applied: int, dead: int) -> None:
        nonlocal taken
        taken += applied + dead
        if taken >= len(bodies):
            drained.set()

    consumer = Consumer(settings, projector, on_batch=on_batch)
    thread = threading.Thread(target=consumer.run, name="tracker-connection", daemon=True)
    try:
        machine_before, servers_before, threads_before = _machine(), _servers(), _threads()
        started = time.monotonic()
        thread.start()
        if not drained.wait(timeout=600):
            raise TimeoutError(f"the consumer took {taken:,} of {len(bodies):,} events in 600 s")
        seconds = time.monotonic() - started
        machine_after, servers_after, threads_after = _machine(), _servers(), _threads()
    finally:
        consumer.stop()
        thread.join(timeout=60)
        engine.dispose()
    per_event = 1e6 / taken
    threads = collections.Counter()
    for tid, (name, cpu) in threads_after.items():
        kind = (
            "writer_threads"
            if name.startswith("tracker-writer")
            else ("connection_thread" if name == "tracker-connection" else "other_threads")
        )
        threads[kind] += cpu - threads_before.get(tid, (name, 0.0))[1]
    busy = 1 - (machine_after[1] - machine_before[1]) / (machine_after[0] - machine_before[0])
    return {
        "store": store,
        "events": taken,
        "seconds": round(seconds, 2),
        "events_per_s": round(taken / seconds),
        "cpu_us_per_event": {
            **{kind: round(cpu * per_event, 1) for kind, cpu in sorted(threads.items())},
            **{name: round((servers_after[name] - servers_before.get(name, 0.0)) * per_event, 1) for name in _SERVERS},
        },
        "machine_busy": round(busy, 3),
        "cores": os.cpu_count(),
        "batch_size": settings.batch_size,
        "prefetch": settings.prefetch,
    }


def _threads() -> dict[str, tuple[str, float]]:
    """This process's threads: native id -> (Python thread name, CPU seconds so far)."""
    names = {str(thread.native_id): thread.name for thread in threading.enumerate()}
    found = {}
    for task in pathlib.Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            found[task.name] = (names.get(task.name, "?"), processes.cpu_seconds(task / "stat"))
    return found


def _servers() -> dict[str, float]:
    """CPU seconds so far of every process of each server (one that ended since is not counted)."""
    totals = dict.fromkeys(_SERVERS, 0.0)
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            for server, names in _SERVERS.items():
                if comm in names:
                    totals[server] += processes.cpu_seconds(proc / "stat")
        except OSError:
            pass
    return totals


def _machine() -> tuple[int, int]:
    """(all ticks, idle ticks) of the whole machine so far, from /proc/stat."""
    ticks = [int(value) for value in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]  # idle and iowait


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.anatomy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--store", choices=("real", "parse", "none"), default="real")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TRACKER_BENCH_ANATOMY_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="the database to drop, create and use (default %(default)s)",
    )
    parser.add_argument("--amqp-url", default=os.environ.get("TRACKER_BENCH_AMQP_URL", DEFAULT_AMQP_URL))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a setting other than its default, e.g. prefetch=5000 (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be at least 1")
    try:
        changes = settings_changes(args.set)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    database = BenchDatabase(args.postgres_url)
    broker = BenchBroker(args.amqp_url, uuid.uuid4().hex[:8])
    settings = settings_for(database, broker, **changes)
    try:
        print(json.dumps(measure(settings, args.events, args.store, database, broker)), flush=True)
    finally:
        broker.delete_all()
        database.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
