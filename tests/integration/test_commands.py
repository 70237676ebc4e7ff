"""What a worker's publish puts on the wire (SPEC §3), and the `tracker` commands of SPEC §5 run as
processes, configured only by their environment."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import uuid

import pika
import pika.exceptions
import pytest
import sqlalchemy as sa

from bench.processes import environment
from tests.conftest import TEST_SECRET
from tests.e2e.live_api import free_port
from tests.polling import poll_until
from tracker import events
from tracker.config import Settings
from tracker.errors import PublishFailed
from tracker.publisher import Publisher
from tracker.store import make_engine
from tracker.users import UserStore

pytestmark = [pytest.mark.rabbitmq]


@pytest.fixture
def settings(amqp_names: dict[str, str], rabbitmq_server: str, tmp_path) -> Settings:
    """This test's broker names and an SQLite file that does not exist yet (no database parameter:
    these tests are about the wire and the commands, not the store)."""
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'fresh.db'}",
        amqp_url=rabbitmq_server,
        secret=TEST_SECRET,
        secret_file=str(tmp_path / "secret"),
        **amqp_names,
    )


def test_a_published_event_carries_the_properties_of_the_spec(settings: Settings) -> None:
    event = events.new_event(42, "succeeded", "done", seq=3)
    with Publisher(settings) as publisher:  # declares the topology, as it does by default
        publisher.publish(event)
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        method, properties, body = poll_until(
            lambda: (got := channel.basic_get(settings.queue, auto_ack=True))[0] is not None and got,
            10,
            "the event in the queue",
        )
    finally:
        connection.close()
    assert method.exchange == settings.exchange
    assert method.routing_key == "job.succeeded"
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert properties.message_id == event.event_id
    assert json.loads(body) == event.to_wire()


def test_an_event_no_queue_would_take_is_not_dropped_silently(settings: Settings) -> None:
    """mandatory: the broker returns an unroutable event, and the publisher raises in the end."""
    lonely = f"test.{uuid.uuid4().hex[:8]}.unbound"
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        connection.channel().exchange_declare(lonely, exchange_type="topic", durable=True)
        with (
            Publisher(settings.with_(exchange=lonely), declare=False, timeout_s=1.0) as publisher,
            pytest.raises(PublishFailed) as raised,
        ):
            publisher.publish(events.new_event(1, "progress", "nobody listens"))
        assert isinstance(raised.value.__cause__, pika.exceptions.UnroutableError)
    finally:
        connection.channel().exchange_delete(lonely)
        connection.close()


def tracker(settings: Settings, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker.cli", *args],
        env=environment(settings, **extra_env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tracker_migrate_creates_the_schema_and_can_run_again(settings: Settings) -> None:
    for _ in range(2):
        done = tracker(settings, "migrate")
        assert done.returncode == 0, done.stderr
    engine = make_engine(settings.database_url)
    try:
        assert {"async_status", "async_status_event", "tracker_user"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_tracker_users_add_stores_a_user_that_can_log_in(settings: Settings) -> None:
    assert tracker(settings, "migrate").returncode == 0
    done = tracker(settings, "users", "add", "deployer", "--role", "operations", TRACKER_PASSWORD="s3cret pass")
    assert (done.returncode, done.stdout) == (0, "added deployer (operations)\n"), done.stderr
    again = tracker(settings, "users", "add", "deployer", "--role", "admin", TRACKER_PASSWORD="other")
    assert again.returncode == 2 and "tracker: user 'deployer' already exists" in again.stderr, again.stderr
    engine = make_engine(settings.database_url)
    try:
        users = UserStore(engine)
        assert users.get("deployer").role == "operations"
    finally:
        engine.dispose()


def test_tracker_run_serves_and_stops_on_sigterm(settings: Settings, tmp_path) -> None:
    port = free_port()
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tracker.cli", "run"],
            env=environment(settings, TRACKER_BIND=f"127.0.0.1:{port}"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def ping() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"tracker run exited with {process.returncode}:\n{log_path.read_text()}")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                connection.request("GET", "/api/5.0/ping")
                response = connection.getresponse()
                return response.status == 200 and json.loads(response.read()) == {"ping": "pong"}
            except OSError:
                return False
            finally:
                connection.close()

        poll_until(ping, 60, "tracker run to answer /api/5.0/ping")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
