"""The run's own PostgreSQL database and RabbitMQ names: created, filled, watched, removed."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Sequence

import pika
import pika.exceptions
import sqlalchemy as sa

from tracker import auth, broker, merge, webhooks
from tracker.config import Settings
from tracker.store import make_engine, migrate
from tracker.users import UserStore

BENCH_USER = "bench"
_TABLES = "async_status, async_status_event, tracker_user, tracker_login_failure"
_ARRIVAL_TIMEOUT_S = 60.0


class MessagesLost(RuntimeError):
    """Published messages never reached the queue, or never reached the consumer.

    The run publishes without confirms, for speed; a broker under heavy load may drop some.
    """


class BenchDatabase:
    """A database of the run's own (dropped and created afresh), on the server of ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._name = sa.make_url(url).database
        if not self._name:
            raise ValueError(f"the PostgreSQL URL names no database: {url}")
        self._admin_url = sa.make_url(url).set(database="postgres")
        self._engine: sa.Engine | None = None

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    def recreate(self) -> None:
        """Drop the database if it exists, create it, and bring it to the newest schema."""
        self.dispose()
        admin = sa.create_engine(self._admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{self._name}"')
        admin.dispose()
        migrate(self.engine)

    def drop(self) -> None:
        self.dispose()
        admin = sa.create_engine(self._admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)')
        admin.dispose()

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def version(self) -> str:
        with self.engine.connect() as conn:
            return "PostgreSQL " + conn.exec_driver_sql("SHOW server_version").scalar_one().split()[0]

    def empty(self) -> None:
        """No jobs, no history, no users; ids start again at 1. Also resets the planner's statistics."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE")
        self.analyze()

    def analyze(self) -> None:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE async_status")
            conn.exec_driver_sql("VACUUM ANALYZE async_status_event")

    def seed_jobs(
        self, count: int, terminal_every: int = 0, failed_every: int = 0, notify_url: str | None = None
    ) -> range:
        """Insert ``count`` jobs in one statement; every ``terminal_every``-th is SUCCEEDED, and every
        ``failed_every``-th FAILED instead. With ``notify_url``, every job has that webhook (SPEC §13),
        its delivery pending, as the API creates one. Their ids."""
        failed = f"g %% {failed_every} = 0" if failed_every else "false"
        terminal = f"({failed} OR g %% {terminal_every} = 0)" if terminal_every else failed
        # Columns named only for a webhook: every other caller's statement stays as it was.
        notify_columns = ", notify_url, notify_state, notify_attempts" if notify_url else ""
        notify_values = f", %(notify_url)s, '{webhooks.PENDING}', 0" if notify_url else ""
        statement = f"""
            WITH new AS (
                INSERT INTO async_status (status, message, initial_message, start_time, end_time,
                                          terminal_at, terminal_seq, terminal_event_id{notify_columns})
                SELECT CASE WHEN {failed} THEN 'FAILED' WHEN {terminal} THEN 'SUCCEEDED' ELSE 'PENDING' END,
                       CASE WHEN {terminal} THEN 'done' ELSE %(message)s END,
                       %(message)s,
                       now() - interval '1 hour',
                       CASE WHEN {terminal} THEN now() END,
                       CASE WHEN {terminal} THEN now() END,
                       CASE WHEN {terminal} THEN 0 END,
                       CASE WHEN {terminal} THEN md5(g::text)::uuid::text END{notify_values}
                FROM generate_series(1, %(count)s) AS g
                RETURNING id
            )
            SELECT min(id), max(id) FROM new
        """
        with self.engine.begin() as conn:
            parameters = {"count": count, "message": merge.DEFAULT_MESSAGE, "notify_url": notify_url}
            first, last = conn.exec_driver_sql(statement, parameters).one()
        return range(first, last + 1)

    def row_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT count(*) FROM async_status").scalar_one()

    def pending_among(self, ids: Sequence[int]) -> int:
        """How many of ``ids`` are still PENDING (a cheap completion check: a few index lookups)."""
        with self.engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT count(*) FROM async_status WHERE id = ANY(%(ids)s) AND status = 'PENDING'",
                {"ids": list(ids)},
            ).scalar_one()

    def add_reader(self, settings: Settings) -> str:
        """A user allowed to read job status, and a token for it signed with ``settings.secret``."""
        assert settings.secret is not None
        user = UserStore(self.engine).add(BENCH_USER, "operations", uuid.uuid4().hex)
        return auth.Tokens(settings.secret, settings.token_ttl_s).issue(BENCH_USER, user.account_id)


class BenchBroker:
    """Exchanges and queues named for this run (and deleted after it), on the broker at ``url``."""

    def __init__(self, url: str, run_id: str) -> None:
        self.url = url
        self._run_id = run_id
        self._declared: list[Settings] = []

    def names(self, tag: str) -> dict[str, str]:
        prefix = f"bench.{self._run_id}.{tag}"
        return {
            "exchange": f"{prefix}.x",
            "queue": f"{prefix}.events",
            "dead_exchange": f"{prefix}.dlx",
            "dead_queue": f"{prefix}.dead",
        }

    def connect(self) -> pika.BlockingConnection:
        return broker.connect(self.url, "tracker-bench")

    def version(self) -> str:
        connection = self.connect()
        try:
            properties = connection._impl.server_properties  # noqa: SLF001 - pika exposes it no other way
            version = properties.get("version", b"?")
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            connection.close()

    def declare(self, settings: Settings) -> None:
        """The topology of the spec under this run's names (quorum queue and all)."""
        connection = self.connect()
        try:
            broker.declare_topology(connection.channel(), settings)
        finally:
            connection.close()
        self._declared.append(settings)

    def fill(
        self,
        settings: Settings,
        bodies: Sequence[bytes],
        on_progress: Callable[[int], None] | None = None,
        keep_below: int | None = None,
    ) -> None:
        """Publish ``bodies`` (persistent, routed by their type) and return once all are queued.

        Without publisher confirms, so that filling is quick; the queue's count is the check
        (MessagesLost when it falls short). With ``keep_below`` a consumer is draining the queue
        meanwhile: publishing pauses while that many are ready, and there is no count to check.
        """
        connection = self.connect()
        try:
            channel = connection.channel()
            channel.queue_purge(settings.queue)  # leftovers of an attempt the broker cut short
            properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
            for sent, body in enumerate(bodies, start=1):
                channel.basic_publish(settings.exchange, _routing_key(body), body, properties)
                if sent % 5000 == 0:
                    if on_progress is not None:
                        on_progress(sent)
                    while keep_below is not None and self.ready(settings.queue, connection) >= keep_below:
                        connection.sleep(0.05)
            if keep_below is None:
                deadline = time.monotonic() + _ARRIVAL_TIMEOUT_S
                while (queued := self.ready(settings.queue, connection)) < len(bodies):
                    if time.monotonic() > deadline:
                        raise MessagesLost(f"{settings.queue}: {queued} of {len(bodies)} published messages queued")
                    connection.sleep(0.02)
        finally:
            if connection.is_open:
                connection.close()

    def ready(self, queue: str, connection: pika.BlockingConnection | None = None) -> int:
        """Messages ready in ``queue`` (not counting those delivered and not yet acked)."""
        own = connection is None
        connection = connection or self.connect()
        try:
            return connection.channel().queue_declare(queue, passive=True).method.message_count
        finally:
            if own:
                connection.close()

    def wait_until_up(self, timeout: float) -> None:
        """Return once the broker takes connections again; raises the last error after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect().close()
                return
            except broker.ERRORS:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2.0)

    def delete_all(self) -> None:
        """Delete every queue and exchange this run declared; absent ones are fine."""
        for settings in self._declared:
            for kind, name in (
                ("queue", settings.queue),
                ("queue", settings.dead_queue),
                ("exchange", settings.exchange),
                ("exchange", settings.dead_exchange),
            ):
                try:
                    connection = self.connect()
                except broker.ERRORS:
                    return
                try:
                    channel = connection.channel()
                    if kind == "queue":
                        channel.queue_delete(name)
                    else:
                        channel.exchange_delete(name)
                except pika.exceptions.AMQPError:
                    pass
                finally:
                    if connection.is_open:
                        connection.close()
        self._declared.clear()


class QueueWatcher:
    """Polls a queue's ready count on a connection of its own: when draining starts, how far it got.

    Between polls nobody answers the broker's heartbeats; after a long pause the broker may
    have closed the connection, so a poll that finds it gone connects again.
    """

    def __init__(self, bench_broker: BenchBroker, queue: str) -> None:
        self._broker = bench_broker
        self._queue = queue
        self._connection = bench_broker.connect()
        self._channel = self._connection.channel()

    def ready(self) -> int:
        try:
            return self._channel.queue_declare(self._queue, passive=True).method.message_count
        except (
            pika.exceptions.StreamLostError,
            pika.exceptions.ConnectionWrongStateError,
            pika.exceptions.ConnectionClosed,
            pika.exceptions.ChannelWrongStateError,
        ):
            self.close()
            self._connection = self._broker.connect()
            self._channel = self._connection.channel()
            return self._channel.queue_declare(self._queue, passive=True).method.message_count

    def close(self) -> None:
        if self._connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self._connection.close()


def _routing_key(body: bytes) -> str:
    # The workload's bodies are compact JSON with "type" right after the ids; reading it this
    # way keeps the publisher loop from parsing every body again.
    marker = body.find(b'"type":"')
    end = body.find(b'"', marker + 8)
    return broker.routing_key(body[marker + 8 : end].decode()) if marker >= 0 else "job.progress"
