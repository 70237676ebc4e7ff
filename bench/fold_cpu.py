"""CPU per event of the store's fold, for #1e's two workloads: PostgreSQL's backend and this process.

    python -m bench.fold_cpu --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_NAME
        [--jobs 4000] [--rounds 6]

Wall-clock rates on a busy machine move by a factor of 2 or 3 from round to round; CPU time moves much less.
This folds each workload of #1e (``workload.lifecycles`` without and with SPEC §11's fields, and
with progress alone) through ``PostgresJobStore.apply`` in batches of 500, in this process, on a
pool of one connection, the sides alternating round by round from fresh rows, and reads the CPU
time of that connection's backend from /proc (so PostgreSQL must run on this machine). Prints one
JSON line: each side's median microseconds per event, in the backend and in this process. Drops
the database at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time

from bench import workload
from bench.cputime import cpu_of
from bench.services import BenchDatabase
from tracker import events
from tracker.store import make_engine
from tracker.store.postgresql import PostgresJobStore

_SIDES = ("plain", "details", "progress only")


def _events(side: str, ids: range) -> list[events.Event]:
    bodies = workload.lifecycles(ids, 5, random.Random(1), details=side != "plain").bodies
    parsed = [events.parse(body) for body in bodies]
    if side == "progress only":
        parsed = [dataclasses.replace(event, result_json=None) for event in parsed]
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fold_cpu", description=__doc__)
    parser.add_argument("--postgres-url", required=True, help="the database to drop, create and use")
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    database = BenchDatabase(args.postgres_url)
    database.recreate()
    engine = make_engine(args.postgres_url, pool_size=1, max_overflow=0)
    store = PostgresJobStore(engine)
    backend_us: dict[str, list[float]] = {side: [] for side in _SIDES}
    own_us: dict[str, list[float]] = {side: [] for side in _SIDES}
    try:
        with engine.connect() as conn:
            backend = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        for round_number in range(args.rounds):
            for side in _SIDES if round_number % 2 == 0 else reversed(_SIDES):
                database.empty()
                batch = _events(side, database.seed_jobs(args.jobs))
                backend_before, own_before = cpu_of(backend), time.process_time()
                if backend_before is None:
                    raise RuntimeError("the connection's backend is not a process of this machine")
                for start in range(0, len(batch), 500):
                    store.apply(batch[start : start + 500])
                backend_after = cpu_of(backend)
                assert backend_after is not None, "the pool of one kept its connection"
                backend_us[side].append((backend_after - backend_before) / len(batch) * 1e6)
                own_us[side].append((time.process_time() - own_before) / len(batch) * 1e6)
        print(
            json.dumps(
                {
                    "jobs": args.jobs,
                    "events_per_side": args.jobs * 5,
                    "rounds": args.rounds,
                    "backend_us_per_event": {side: round(statistics.median(v), 1) for side, v in backend_us.items()},
                    "backend_us_per_round": {side: [round(x, 1) for x in v] for side, v in backend_us.items()},
                    "own_us_per_event": {side: round(statistics.median(v), 1) for side, v in own_us.items()},
                }
            )
        )
    finally:
        engine.dispose()
        database.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
