"""The references the tracker is measured against, each run as its own process.

    python -m bench.references drain ...       bare pika loop: parse and ack, nothing else (the limit)
    python -m bench.references pipeline ...    the drain plus an UPDATE of each event's row, committed before the ack
    python -m bench.references naive ...       one event per transaction, acked one by one
    python -m bench.references roundtrip ...   publish -> consume latency on the same broker
    python -m bench.references constant-api    a constant-JSON Falcon endpoint under the API's gunicorn
    python -m bench.references constant-sync-api    the same endpoint under gunicorn's default sync workers

The consuming ones print one JSON object on stdout when done.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar

import falcon
import falcon.media
import orjson
import sqlalchemy as sa

from tracker import auth, broker, events
from tracker.config import Settings
from tracker.store import make_engine, open_job_store


def drain(args: argparse.Namespace) -> dict[str, Any]:
    """Consume ``count`` messages: parse each body as the tracker does (json), ack every ``ack_every``.

    The same client library, connection class, prefetch and multiple-acks as the tracker's
    consumer: what is left is the cost of the broker and of pika themselves.
    """

    def handle(ch: Any, method: Any, _properties: Any, body: bytes, seen: int) -> None:
        json.loads(body)
        if seen % args.ack_every == 0 or seen == args.count:
            ch.basic_ack(method.delivery_tag, multiple=True)

    return _consume_counted(args, "bench-drain", handle)


# The row of each event, by id: its status from the event's type, its message. Sent for a whole
# batch at once (psycopg's executemany: one statement prepared, run for every event, in one round trip).
_UPDATE_ROW = "UPDATE bare_pipeline_job SET status = %s, message = %s WHERE id = %s"
_STATUS_OF = {"progress": "PENDING", "succeeded": "SUCCEEDED", "failed": "FAILED"}
# A table of its own, as plain as a table of statuses gets, holding async_status's rows. The
# tracker's table has what a bare consumer's would not: triggers that notify the API's caches of
# every statement (run 500 times a batch by a statement per event, they cost more PostgreSQL CPU
# than the tracker's whole fold: docs/timeline.md), partial indexes, the merge's columns.
_BARE_TABLE = [
    "DROP TABLE IF EXISTS bare_pipeline_job",
    "CREATE TABLE bare_pipeline_job (id bigint PRIMARY KEY, status text NOT NULL, message text)",
    "INSERT INTO bare_pipeline_job SELECT id, status, message FROM async_status",
    "ANALYZE bare_pipeline_job",
]


def pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """The simplest consumer that keeps rows at all: the drain above, plus every ``ack_every``
    messages one batched UPDATE of status and message per event (by id), committed before the
    multiple ack.

    No merge rule (the last delivered wins), no validation or dead letters, no history or
    timeline, no locks taken first, no lease; the writes on pika's own thread, as a first
    consumer would write them, into a plain table it makes (untimed) before it consumes.
    """
    import psycopg

    url = sa.make_url(args.database_url).set(drivername="postgresql")
    database = psycopg.connect(url.render_as_string(hide_password=False))
    for statement in _BARE_TABLE:
        database.execute(statement)
    database.commit()
    rows: list[tuple[str, str | None, int]] = []

    def handle(ch: Any, method: Any, _properties: Any, body: bytes, seen: int) -> None:
        event = json.loads(body)
        rows.append((_STATUS_OF[event["type"]], event.get("message"), event["job_id"]))
        if seen % args.ack_every == 0 or seen == args.count:
            with database.cursor() as cursor:
                cursor.executemany(_UPDATE_ROW, rows)
            database.commit()
            rows.clear()
            ch.basic_ack(method.delivery_tag, multiple=True)

    try:
        return _consume_counted(args, "bench-pipeline", handle)
    finally:
        database.close()


def naive(args: argparse.Namespace) -> dict[str, Any]:
    """The consumer of a tutorial: for each message, validate, fold it in its own transaction, ack.

    The fold is the tracker's own (``JobStore.apply`` of one event), so the difference from the
    tracker is batching alone. Prefetch 1, as tutorials set it.
    """
    engine = make_engine(args.database_url)
    store = open_job_store(engine)

    def handle(ch: Any, method: Any, properties: Any, body: bytes, _seen: int) -> None:
        store.apply([events.parse(body, properties.content_type)])
        ch.basic_ack(method.delivery_tag)

    try:
        return _consume_counted(args, "bench-naive", handle)
    finally:
        engine.dispose()


def _consume_counted(
    args: argparse.Namespace, client: str, handle: Callable[[Any, Any, Any, bytes, int], None]
) -> dict[str, Any]:
    """Consume ``args.count`` messages from ``args.queue``, each passed to ``handle`` with how many
    have been seen (itself included); when the first arrived and when the last was handled."""
    connection = broker.connect(args.amqp_url, client)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=args.prefetch)
    seen = 0
    first_at = 0.0

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        nonlocal seen, first_at
        if seen == 0:
            first_at = time.monotonic()
        seen += 1
        handle(ch, method, properties, body, seen)
        if seen == args.count:
            ch.stop_consuming()

    channel.basic_consume(args.queue, on_message)
    channel.start_consuming()
    last_at = time.monotonic()
    connection.close()
    return {"events": seen, "first_at": first_at, "last_at": last_at}


def roundtrip(args: argparse.Namespace) -> dict[str, Any]:
    """Receive until ``count`` messages or ``idle_s`` of silence; latency from ``bench_sent_at`` in each body.

    Prints the percentiles and every latency (``latencies_s``), for runs that pool several rounds.

    Publisher and consumer read the same monotonic clock (one machine, CLOCK_MONOTONIC).
    """
    connection = broker.connect(args.amqp_url, "bench-roundtrip")
    channel = connection.channel()
    channel.basic_qos(prefetch_count=args.prefetch)
    latencies: list[float] = []
    last_seen = time.monotonic()

    def on_message(ch: Any, method: Any, _properties: Any, body: bytes) -> None:
        nonlocal last_seen
        last_seen = time.monotonic()
        latencies.append(last_seen - json.loads(body)["bench_sent_at"])
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(args.queue, on_message)
    print("ready", file=sys.stderr, flush=True)
    while len(latencies) < args.count and (not latencies or time.monotonic() - last_seen < args.idle_s):
        connection.process_data_events(time_limit=0.2)
    connection.close()
    return {"received": len(latencies), **percentiles_ms(latencies), "latencies_s": latencies}


def percentiles_ms(seconds: list[float]) -> dict[str, float | None]:
    """p50, p90, p99 and max of latencies given in seconds, in milliseconds."""
    if len(seconds) < 2:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {
        "p50_ms": cuts[49] * 1000,
        "p90_ms": cuts[89] * 1000,
        "p99_ms": cuts[98] * 1000,
        "max_ms": max(seconds) * 1000,
    }


def constant_app() -> falcon.App:
    """The job-status route answering one constant job, rendered as the API renders JSON."""
    app = falcon.App()
    json_handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.resp_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: json_handler})
    app.add_route("/api/{version}/async_status/{job_id}", _ConstantJob())
    return app


class _ConstantJob:
    _BODY: ClassVar[dict[str, Any]] = {
        "response": {
            "id": 1,
            "status": "SUCCEEDED",
            "start_time": "2021-02-18T17:13:56.352261Z",
            "end_time": "2021-02-18T17:14:02.000001Z",
            "message": "Async job has started.",
        }
    }

    def on_get(self, _req: falcon.Request, resp: falcon.Response, version: str, job_id: str) -> None:
        resp.media = self._BODY


def constant_api(_args: argparse.Namespace) -> None:
    """Serve ``constant_app`` with the gunicorn configuration ``tracker api`` uses, from the environment."""
    # The API's own gunicorn application class, with only the app swapped: whatever worker
    # class, worker count and limits `tracker api` runs with, the reference runs with too.
    from api import server

    class ConstantGunicorn(server._Gunicorn):  # noqa: SLF001 - see above
        def load(self) -> falcon.App:
            return constant_app()

    settings = Settings.from_env(os.environ)
    secret = auth.load_secret(settings.secret, settings.secret_file)
    ConstantGunicorn(settings.with_(secret=secret), False).run()


def constant_sync_api(_args: argparse.Namespace) -> None:
    """Serve ``constant_app`` under gunicorn's defaults (sync workers, no keep-alive), as many
    workers as ``tracker api`` runs, on its address: the bare app that GET by id is held to
    (issue 23: at least 0.95x of it), whatever worker class the API itself uses."""
    from gunicorn.app.base import BaseApplication

    settings = Settings.from_env(os.environ)

    class BareGunicorn(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", [settings.bind])
            self.cfg.set("workers", settings.workers)

        def load(self) -> falcon.App[falcon.Request, falcon.Response]:  # type: ignore[override]
            return constant_app()

    BareGunicorn().run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.references", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in (("drain", drain), ("pipeline", pipeline), ("naive", naive), ("roundtrip", roundtrip)):
        command = commands.add_parser(name)
        command.add_argument("--amqp-url", required=True)
        command.add_argument("--queue", required=True)
        command.add_argument("--count", type=int, required=True)
        command.add_argument("--prefetch", type=int, default=1000)
        command.set_defaults(handler=handler)
        if name in ("drain", "pipeline"):
            command.add_argument("--ack-every", type=int, default=500)
        if name in ("naive", "pipeline"):
            command.add_argument("--database-url", required=True)
        if name == "roundtrip":
            command.add_argument("--idle-s", type=float, default=5.0)
    commands.add_parser("constant-api").set_defaults(handler=constant_api)
    commands.add_parser("constant-sync-api").set_defaults(handler=constant_sync_api)
    args = parser.parse_args(argv)
    found = args.handler(args)
    if found is not None:
        print(orjson.dumps(found).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
