"""How long a migration holds off writes to a large table: time it while a writer keeps updating rows.

    python -m bench.migration_hold --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_NAME
        [--rows 5000000] [--to 0008]

Drops and creates the database, brings it to the revision before ``--to``, fills ``async_status``
with ``--rows`` jobs (one in fifty FAILED, the newest 50,000 PENDING; from 0008 on with kinds,
labels and error codes) and each a timeline event,
then upgrades to ``--to`` while a writer thread updates one random row at a time, each in its own
transaction, as the consumer's folds would. Prints one JSON line: how long the upgrade took, and
the writer's slowest update while it ran against its median before. Drops the database at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from bench.services import BenchDatabase
from tracker.store import make_engine, migrations

_FILL = """
INSERT INTO async_status (status, message, initial_message, start_time, end_time,
                          terminal_at, terminal_seq, terminal_event_id)
SELECT CASE WHEN g > %(count)s - 50000 THEN 'PENDING' WHEN g %% 50 = 0 THEN 'FAILED' ELSE 'SUCCEEDED' END,
       'x', 'x', now() - interval '1 day',
       CASE WHEN g > %(count)s - 50000 THEN NULL ELSE now() END,
       CASE WHEN g > %(count)s - 50000 THEN NULL ELSE now() END,
       0, md5(g::text)::uuid::text
FROM generate_series(1, %(count)s) AS g
"""
# From 0008 on, jobs say what they are (SPEC §11), as bench.list_filters fills them: 200 kinds,
# three labels each, the FAILED ones an error code.
_FILL_DETAILS = """
INSERT INTO async_status (status, message, initial_message, start_time, end_time,
                          terminal_at, terminal_seq, terminal_event_id, kind, labels, error_code)
SELECT CASE WHEN g > %(count)s - 50000 THEN 'PENDING' WHEN g %% 50 = 0 THEN 'FAILED' ELSE 'SUCCEEDED' END,
       'x', 'x', now() - interval '1 day',
       CASE WHEN g > %(count)s - 50000 THEN NULL ELSE now() END,
       CASE WHEN g > %(count)s - 50000 THEN NULL ELSE now() END,
       0, md5(g::text)::uuid::text,
       'kind-' || (g %% 200),
       jsonb_build_object('env', (ARRAY['prod', 'staging', 'dev'])[g %% 3 + 1],
                          'region', 'r' || (g %% 7), 'team', 't' || (g %% 50)),
       CASE WHEN g <= %(count)s - 50000 AND g %% 50 = 0 THEN (ARRAY['lost', 'timeout', 'failed'])[g %% 3 + 1] END
FROM generate_series(1, %(count)s) AS g
"""
_EVENTS = """
INSERT INTO async_status_event (job_id, event_id, occurred_at, seq, type, message, received_at)
SELECT id, md5(id::text)::uuid::text, start_time, 0, 'progress', 'x', start_time FROM async_status
"""


def _config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations._SCRIPTS))  # noqa: SLF001 - the shipped scripts
    config.attributes["connection"] = connection
    return config


class Writer(threading.Thread):
    """Updates one random row at a time, each in its own transaction, timing each."""

    def __init__(self, engine: sa.Engine, rows: int) -> None:
        super().__init__(daemon=True)
        self._engine, self._rows = engine, rows
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (started, seconds)

    def run(self) -> None:
        rng = random.Random(1)
        with self._engine.connect() as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                with conn.begin():
                    conn.exec_driver_sql(
                        "UPDATE async_status SET message = 'y' WHERE id = %(id)s", {"id": rng.randrange(1, self._rows)}
                    )
                self.samples.append((started, time.monotonic() - started))
                time.sleep(0.001)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.migration_hold", description=__doc__)
    parser.add_argument("--postgres-url", required=True, help="the database to drop, create and use")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--to", default=migrations.newest_revision(), help="the revision to time (default the newest)")
    args = parser.parse_args(argv)
    database = BenchDatabase(args.postgres_url)
    database.recreate()  # to the newest; then back to the revision before --to, on an empty table
    before = ScriptDirectory(str(migrations._SCRIPTS)).get_revision(args.to).down_revision  # noqa: SLF001
    engine = make_engine(args.postgres_url)
    try:
        with engine.begin() as conn:
            command.downgrade(_config(conn), str(before))
        filled = time.monotonic()
        with engine.begin() as conn:
            columns = {column["name"] for column in sa.inspect(conn).get_columns("async_status")}
            conn.exec_driver_sql(_FILL_DETAILS if "kind" in columns else _FILL, {"count": args.rows})
            conn.exec_driver_sql(_EVENTS)
        database.analyze()
        filled = time.monotonic() - filled
        writer = Writer(engine, args.rows)
        writer.start()
        time.sleep(3.0)  # the writer's pace before
        began = time.monotonic()
        # Outside a transaction, as tracker migrate runs it: alembic's own, which 0013 commits to
        # build its indexes concurrently.
        with engine.connect() as conn:
            command.upgrade(_config(conn), args.to)
        ended = time.monotonic()
        time.sleep(1.0)
        writer.stop.set()
        writer.join()
        calm = [seconds for at, seconds in writer.samples if at < began]
        during = [seconds for at, seconds in writer.samples if began <= at <= ended]
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "revision": args.to,
                    "fill_s": round(filled, 1),
                    "upgrade_ms": round((ended - began) * 1000, 1),
                    "writes_during": len(during),
                    "slowest_write_during_ms": round(max(during, default=0.0) * 1000, 1),
                    "slowest_write_overall_ms": round(max(s for _, s in writer.samples) * 1000, 1),
                    "median_write_before_ms": round(statistics.median(calm) * 1000, 2),
                }
            )
        )
    finally:
        engine.dispose()
        database.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
