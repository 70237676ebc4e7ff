"""What SPEC §13's cursor costs the fold: the product's store against ``WithoutCursor``, in one run.

    python -m bench.cursor_cost --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_NAME
        [--jobs 4000] [--rounds 6] [--folders 2]

Each round seeds fresh rows and folds #1e's workload (``workload.lifecycles``, five events a job)
through ``PostgresJobStore.apply`` in batches of 500, from ``--folders`` threads at once (each its own
jobs and connection, as several consumers: the cursor's lock makes their commits take turns), the
sides alternating round by round. The "off" side folds with ``WithoutCursor``, the merge less its
change log and lock (all that the cursor costs the fold). Prints one JSON line: each side's events/s and
PostgreSQL backend CPU µs per event per round, their medians, and the ratios on/off. Drops the
database at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time

from bench import workload
from bench.cputime import cpu_of
from bench.services import BenchDatabase
from bench.store_variants import WithoutCursor
from tracker import events
from tracker.store import make_engine
from tracker.store.jobs import JobStore
from tracker.store.postgresql import PostgresJobStore

_BATCH = 500


def _fold_round(store: JobStore, parts: list[list[events.Event]], backends: list[int]) -> tuple[float, float]:
    """Fold each part on a thread of its own; the events/s of all, and the backends' CPU µs per event."""
    before = [cpu_of(pid) or 0.0 for pid in backends]
    failures: list[Exception] = []

    def fold(part: list[events.Event]) -> None:
        try:
            for start in range(0, len(part), _BATCH):
                store.apply(part[start : start + _BATCH])
        except Exception as exc:  # noqa: BLE001 - re-raised on the main thread
            failures.append(exc)

    threads = [threading.Thread(target=fold, args=(part,)) for part in parts]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise failures[0]
    count = sum(map(len, parts))
    cpu = sum((cpu_of(pid) or 0.0) - b for pid, b in zip(backends, before, strict=True))
    return count / elapsed, cpu / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cursor_cost", description=__doc__)
    parser.add_argument("--postgres-url", required=True, help="the database to drop, create and use")
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--folders", type=int, default=2)
    args = parser.parse_args(argv)
    database = BenchDatabase(args.postgres_url)
    database.recreate()
    engine = make_engine(args.postgres_url, pool_size=args.folders, max_overflow=0)
    sides: dict[str, JobStore] = {"on": PostgresJobStore(engine), "off": WithoutCursor(engine)}
    rates: dict[str, list[float]] = {side: [] for side in sides}
    cpu_us: dict[str, list[float]] = {side: [] for side in sides}
    try:
        connections = [engine.connect() for _ in range(args.folders)]
        backends = [int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()) for conn in connections]
        for conn in connections:
            conn.close()  # back to the pool, which keeps them: the folds use these backends
        for round_number in range(args.rounds):
            for side in ("on", "off") if round_number % 2 == 0 else ("off", "on"):
                database.empty()
                ids = database.seed_jobs(args.jobs)
                bodies = workload.lifecycles(ids, 5, random.Random(round_number)).bodies
                parsed = [events.parse(body) for body in bodies]
                parts = [[e for e in parsed if e.job_id % args.folders == n] for n in range(args.folders)]
                rate, cpu = _fold_round(sides[side], parts, backends)
                rates[side].append(rate)
                cpu_us[side].append(cpu)
        medians = {side: statistics.median(v) for side, v in rates.items()}
        cpu_medians = {side: statistics.median(v) for side, v in cpu_us.items()}
        print(
            json.dumps(
                {
                    "jobs": args.jobs,
                    "events_per_round": args.jobs * 5,
                    "rounds": args.rounds,
                    "folders": args.folders,
                    "events_per_s": {side: round(v) for side, v in medians.items()},
                    "events_per_s_per_round": {side: [round(x) for x in v] for side, v in rates.items()},
                    "backend_us_per_event": {side: round(v, 1) for side, v in cpu_medians.items()},
                    "backend_us_per_round": {side: [round(x, 1) for x in v] for side, v in cpu_us.items()},
                    "throughput_ratio_on_off": round(medians["on"] / medians["off"], 3),
                    "cpu_ratio_on_off": round(cpu_medians["on"] / cpu_medians["off"], 3),
                }
            )
        )
    finally:
        engine.dispose()
        database.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
