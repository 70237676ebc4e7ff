"""The list's filters (SPEC §11) on a large, realistic table: its rows, its pages, and ingest with and without 0013.

    python -m bench.list_filters ingest --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_NAME
        [--base-rows 1000000] [--jobs 20000] [--rounds 4]

``seed`` fills a table as a busy tracker's would be (``#9`` of ``make bench`` times the list's
first pages on it, ``bench.measurements.job_list``); ``PAGES`` are those pages and what each
answer must hold. ``ingest`` is the A/B of migration 0013's indexes (and fillfactor) on the fold:
two databases seeded alike with ``--base-rows`` rows, one with 0013's indexes and fillfactor and one
without them (``_without_0013``), each folding
the events of ``--jobs`` new jobs (four progress events with a ``progress``, then a terminal one
with a result: ``workload.lifecycles(details=True)``) through ``PostgresJobStore.apply`` in batches
of 500, the sides alternating round by round; it prints one JSON line with each side's events
per second, the ratio of the means, and the share of row updates that were HOT on each side (from
``pg_stat_user_tables``). Drops both databases at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import time
from collections.abc import Callable

import orjson
import sqlalchemy as sa

from bench import workload
from bench.services import BenchDatabase
from tracker import events
from tracker.store import make_engine
from tracker.store.postgresql import PostgresJobStore

KINDS = 200
KIND = "kind-7"
SPACING_MS = 500  # between two jobs' starts: 5,000,000 jobs span 29 days, the last hour 7,200

# One in fifty finished jobs FAILED, a tenth of those lost and a tenth timed out; each job one of
# 200 kinds and three labels, drawn by hashes of its number (not its residues, which would tie
# them to each other and to the status).
_SEED = """
INSERT INTO async_status (status, message, initial_message, start_time, end_time, terminal_at, terminal_seq,
                          terminal_event_id, kind, labels, error_code)
SELECT CASE WHEN g > %(finished)s THEN 'PENDING' WHEN g %% 50 = 0 THEN 'FAILED' ELSE 'SUCCEEDED' END,
       'x', 'x', s, CASE WHEN g <= %(finished)s THEN s + interval '30 s' END,
       CASE WHEN g <= %(finished)s THEN s + interval '30 s' END, 0,
       CASE WHEN g <= %(finished)s THEN md5(g::text)::uuid::text END,
       'kind-' || abs(hashint4(g) %% %(kinds)s),
       jsonb_build_object('env', (ARRAY['prod', 'staging', 'dev'])[abs(hashint4(-g) %% 3) + 1],
                          'region', 'r' || abs(hashint8(g) %% 7), 'team', 't' || abs(hashint8(-g) %% 50)),
       CASE WHEN g <= %(finished)s AND g %% 50 = 0
            THEN (ARRAY['lost', 'timeout', 'failed', 'failed', 'failed', 'failed', 'failed', 'failed', 'failed',
                        'failed'])[(g / 50) %% 10 + 1] END
FROM generate_series(1, %(rows)s) AS g,
     LATERAL (SELECT now() - (%(rows)s - g)::bigint * %(spacing)s * interval '1 millisecond' AS s) AS started
"""


def seed(database: BenchDatabase, rows: int, running: int) -> range:
    """Fill ``async_status`` (empty) with ``rows`` jobs, the newest ``running`` PENDING; their ids."""
    with database.engine.begin() as conn:
        conn.exec_driver_sql(_SEED, {"rows": rows, "finished": rows - running, "kinds": KINDS, "spacing": SPACING_MS})
        first, last = conn.exec_driver_sql("SELECT min(id), max(id) FROM async_status").one()
    database.analyze()
    return range(first, last + 1)


def _page(check: Callable[[dict[str, object]], bool]) -> Callable[[bytes], bool]:
    """A check of an answer: a page of at least one job (a hundred on the full table; a small
    one may match fewer), each kept by ``check``."""

    def whole(body: bytes) -> bool:
        page = orjson.loads(body)["response"]
        return 0 < len(page) <= 100 and all(check(job) for job in page)

    return whole


def _recent(job: dict[str, object]) -> bool:
    started = dt.datetime.fromisoformat(str(job["start_time"]))
    return started >= dt.datetime.now(dt.UTC) - dt.timedelta(hours=1, minutes=1)


_NEWEST = "orderby=id&sortOrder=desc&limit=100"
# The first page, newest first, of each filter SPEC §11's target names, and of FAILED as before.
PAGES: dict[str, tuple[str, Callable[[bytes], bool]]] = {
    "status=PENDING": ("status=PENDING", _page(lambda job: job["status"] == "PENDING")),
    "status=FAILED": ("status=FAILED", _page(lambda job: job["status"] == "FAILED")),
    "kind=K": (f"kind={KIND}", _page(lambda job: job.get("kind") == KIND)),
    "label=env=prod": ("label=env=prod", _page(lambda job: job.get("labels", {}).get("env") == "prod")),  # type: ignore[union-attr]
    "kind=K&status=FAILED": (
        f"kind={KIND}&status=FAILED",
        _page(lambda job: job.get("kind") == KIND and job["status"] == "FAILED"),
    ),
    "errorCode=lost": ("errorCode=lost", _page(lambda job: job.get("error") == {"code": "lost"})),
    "startedAfter=1h": ("startedAfter=1h", _page(_recent)),
}


def path_of(name: str) -> str:
    return f"/api/5.0/async_status?{PAGES[name][0]}&{_NEWEST}"


def _hot_share(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        updated, hot = conn.exec_driver_sql(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'async_status'"
        ).one()
    return int(updated), int(hot)


def _new_jobs(engine: sa.Engine, count: int) -> range:
    """``count`` new PENDING jobs, as creation makes them (a kind and three labels each)."""
    with engine.begin() as conn:
        first, last = conn.exec_driver_sql(
            """
            WITH new AS (
                INSERT INTO async_status (status, message, initial_message, kind, labels)
                SELECT 'PENDING', 'x', 'x', 'kind-' || abs(hashint4(g) %% 200),
                       jsonb_build_object('env', 'prod', 'region', 'r1', 'team', 't' || (g %% 50))
                FROM generate_series(1, %(count)s) AS g RETURNING id
            ) SELECT min(id), max(id) FROM new
            """,
            {"count": count},
        ).one()
    return range(first, last + 1)


# The fold needs the tables of later revisions (the streams' change log, 0015), so the "0012" side
# is the newest revision with 0013's indexes and fillfactor undone, not a database at 0012.
_INDEXES_0013 = ("ix_async_status_pending_by_id", "ix_async_status_kind", "ix_async_status_error_code")


def _without_0013(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for name in _INDEXES_0013:
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql("ALTER TABLE async_status RESET (fillfactor)")


def ingest(base_url: str, base_rows: int, jobs: int, rounds: int) -> dict[str, object]:
    """The A/B of ``main``'s docstring; the JSON line's fields."""
    url = sa.make_url(base_url)
    sides = {
        revision: BenchDatabase(url.set(database=f"{url.database}_{revision}").render_as_string(hide_password=False))
        for revision in ("0013", "0012")
    }
    rates: dict[str, list[float]] = {revision: [] for revision in sides}
    hot: dict[str, list[float]] = {revision: [] for revision in sides}
    engines: dict[str, sa.Engine] = {}
    try:
        for revision, database in sides.items():
            database.recreate()
            if revision != "0013":
                _without_0013(database.engine)
            seed(database, base_rows, running=0)
            engines[revision] = make_engine(database.url, pool_size=1, max_overflow=0)
        for round_number in range(rounds):
            for revision in sides if round_number % 2 == 0 else reversed(sides):
                engine = engines[revision]
                ids = _new_jobs(engine, jobs)
                batch = [
                    events.parse(body)
                    for body in workload.lifecycles(ids, 5, random.Random(round_number), details=True).bodies
                ]
                store = PostgresJobStore(engine)
                time.sleep(1.5)  # the statistics of the inserts flushed before the count starts
                updated, hot_updated = _hot_share(engine)
                started = time.perf_counter()
                for start in range(0, len(batch), 500):
                    store.apply(batch[start : start + 500])
                rates[revision].append(len(batch) / (time.perf_counter() - started))
                time.sleep(1.5)
                after_updated, after_hot = _hot_share(engine)
                hot[revision].append((after_hot - hot_updated) / max(after_updated - updated, 1))
    finally:
        for engine in engines.values():
            engine.dispose()
        for database in sides.values():
            database.drop()
    with_indexes, without = statistics.mean(rates["0013"]), statistics.mean(rates["0012"])
    return {
        "base_rows": base_rows,
        "jobs": jobs,
        "events_per_round": jobs * 5,
        "rounds": rounds,
        "events_per_s": {revision: [round(rate) for rate in r] for revision, r in rates.items()},
        "ratio_0013_to_0012": round(with_indexes / without, 3),
        "hot_update_share": {revision: [round(share, 3) for share in s] for revision, s in hot.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.list_filters", description=__doc__)
    parser.add_argument("what", choices=["ingest"])
    parser.add_argument("--postgres-url", required=True, help="names the databases to drop, create and use")
    parser.add_argument("--base-rows", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    print(json.dumps(ingest(args.postgres_url, args.base_rows, args.jobs, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
