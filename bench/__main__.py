"""`make bench` / `make bench-quick`: measure the tracker beside the raw limits of this machine.

Runs against the local RabbitMQ and PostgreSQL, in a database and under queue names of its own
(both removed at the end). Prints one JSON line per measurement on stdout and progress on
stderr; the full run also writes docs/performance.md. Exits non-zero only when the run itself
fails, never because a target was missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import pathlib
import shlex
import signal
import sys
import uuid

import pika.exceptions

from bench import load, measurements
from bench.processes import ROOT
from bench.report import Progress, Run, describe_machine, summary, write_docs
from bench.services import BenchBroker, BenchDatabase, MessagesLost
from bench.testbed import DEFAULT_AMQP_URL, FULL, QUICK, Testbed, settings_changes
from tracker.config import ConfigError
from tracker.errors import BrokerUnreachable

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/tracker_bench"
_ATTEMPTS = 3  # per measurement, when the broker goes away under it (a restart of the machine's broker by its operator)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="scaled-down sizes (CI); writes no docs unless --docs")
    parser.add_argument(
        "--only", default=",".join(measurements.MEASUREMENTS), help="comma-separated subset of: %(default)s"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TRACKER_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="the database to drop, create and use (default %(default)s)",
    )
    parser.add_argument("--amqp-url", default=os.environ.get("TRACKER_BENCH_AMQP_URL", DEFAULT_AMQP_URL))
    parser.add_argument(
        "--docs",
        type=pathlib.Path,
        default=None,
        help="where to write the report (default docs/performance.md, full runs only)",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=ROOT / "bench-out",
        help="logs of the child processes (default %(default)s)",
    )
    parser.add_argument("--keep-database", action="store_true", help="leave the benchmark database behind")
    parser.add_argument(
        "--metrics-ab",
        action="store_true",
        help="in #1 and #3, also run the tracker with TRACKER_METRICS=false, alternating, and report the cost",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="run the tracker with a setting other than its default, e.g. flush_ms=5 (repeatable; noted in the report)",
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(measurements.MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(unknown)}")
    docs = args.docs or (None if args.quick else ROOT / "docs" / "performance.md")
    try:
        changes = settings_changes(args.set)
    except ConfigError as exc:
        parser.error(str(exc))

    # SIGTERM unwinds like Ctrl-C, so the children, queues and database are still cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # connection chatter; failures surface as exceptions
    progress = Progress()
    command = "make bench-quick" if args.quick else "make bench"
    if sys.argv[1:] and argv is None:
        command = "python -m bench " + shlex.join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    database = BenchDatabase(args.postgres_url)
    broker = BenchBroker(args.amqp_url, uuid.uuid4().hex[:8])
    progress.say(
        f"{'quick' if args.quick else 'full'} run of {', '.join(chosen)}; database "
        f"{database.url.rsplit('/', 1)[-1]} (dropped and created afresh), logs in {args.out}"
    )
    database.recreate()
    tool = "wrk" if load.wrk_available() else "Python processes (wrk is not installed)"
    run = Run(
        command=command,
        mode="quick" if args.quick else "full",
        started=dt.datetime.now(dt.UTC),
        machine=describe_machine(database.version(), broker.version(), tool),
    )
    if not load.wrk_available():
        progress.say("wrk is not installed: the API is loaded by Python processes instead")
    if changes:
        run.notes.append(
            "The tracker ran with settings other than its defaults: "
            + ", ".join(f"`{name}={value}`" for name, value in changes.items())
            + "."
        )
    base = Testbed.settings_for(args.postgres_url, args.amqp_url, args.out).with_(**changes)
    bed = Testbed(QUICK if args.quick else FULL, database, broker, base, args.out, progress, run)
    bed.metrics_ab = args.metrics_ab
    if args.metrics_ab:
        run.notes.append("#1 and #3 also ran the tracker with metrics off (`--metrics-ab`): see `metrics_cost`.")
    try:
        for name in chosen:
            for result in _measure(name, bed):
                run.results.append(result)
                print(result.line(), flush=True)
    finally:
        bed.stop_all()
        broker.delete_all()
        if args.keep_database:
            database.dispose()
        else:
            database.drop()
    run.finished = dt.datetime.now(dt.UTC)
    run.load_after = os.getloadavg()
    progress.say(summary(run.results))
    if docs is not None:
        write_docs(docs, run)
        progress.say(f"wrote {docs}")
    return 0


def _measure(name: str, bed: Testbed) -> list:
    """Run one measurement, from the start again if the broker restarts or drops messages during it."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return measurements.MEASUREMENTS[name](bed)
        except (
            pika.exceptions.AMQPConnectionError,
            pika.exceptions.ConnectionWrongStateError,
            BrokerUnreachable,
            MessagesLost,
        ) as exc:
            bed.stop_all()
            if attempt == _ATTEMPTS:
                raise
            bed.progress.say(
                f"{name}: the broker failed us ({type(exc).__name__}: {exc}); measuring again once it answers"
            )
            bed.broker.wait_until_up(timeout=300)
    raise AssertionError("unreachable")


if __name__ == "__main__":
    sys.exit(main())
