"""Every process started while its database or broker is away (as compose and Kubernetes start
them): it stays up, says so in one clear line, answers /healthz 200 and /readyz 503 with the
reason, and starts serving when the service comes; ``tracker migrate --wait S`` waits for it.

"Away" is a closed port: nothing listens there until the test opens a TCP proxy of its own on it
(tests/faults/proxy.py) in front of the machine's PostgreSQL or RabbitMQ.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from bench.processes import environment, free_port
from tests.conftest import AMQP_URL, POSTGRES_URL, TEST_SECRET, settings_for
from tests.e2e.live_api import running_api
from tests.endpoints import get
from tests.faults import rabbitmq
from tests.faults.proxy import TcpProxy
from tests.metrics_text import scrape, total
from tests.polling import poll_until
from tests.processes import ConsumerProcess
from tracker import merge
from tracker.config import Settings
from tracker.publisher import Publisher
from tracker.store import make_engine, migrate, open_job_store, schema_problem

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

_SERVING = re.compile(r"serving /metrics, /healthz and /readyz on (http://\S+)")
_PASSWORD = re.compile(r"created user 'admin' with password (\S+)")
AWAY_S = 3.0  # how long the service stays away after the process started: several attempts to reach it


@pytest.fixture
def new_database() -> Iterator[Callable[[bool], str]]:
    """Makes databases of this test's own on the machine's PostgreSQL (migrated or empty); dropped after."""
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make(migrated: bool) -> str:
        name = f"tracker_early_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        made.append(name)
        url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        if migrated:
            engine = make_engine(url)
            migrate(engine)
            engine.dispose()
        return url

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def closed_port_for(url: str) -> tuple[str, int]:
    """``url`` moved to a port nothing listens on (yet), and that port."""
    port = free_port()
    return sa.make_url(url).set(port=port).render_as_string(hide_password=False), port


def postgres_upstream() -> tuple[str, int]:
    server = sa.make_url(POSTGRES_URL)
    return server.host or "127.0.0.1", server.port or 5432


def lines_of(log: str, logger: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if f" {logger}[" in line and text in line]


def alert_of(body: bytes | object) -> str:
    """The first alert's text of a JSON body (bytes), or of one already read (a dict)."""
    read = json.loads(body) if isinstance(body, bytes) else body
    assert isinstance(read, dict), read
    return str(read["alerts"][0]["text"])


def test_the_api_started_before_its_database_serves_health_then_everything_once_it_comes(tmp_path, new_database):
    url, port = closed_port_for(new_database(True))
    with running_api(url, tmp_path, log_level="INFO") as api:
        time.sleep(AWAY_S)
        assert api.process.poll() is None, api.log()
        assert api.request("GET", "/healthz").status == 200
        ready = api.request("GET", "/readyz")
        assert ready.status == 503 and "database" in alert_of(ready.body), ready
        login = api.request(
            "POST", "/api/5.0/user/login", b'{"u":"admin","p":"x"}', {"Content-Type": "application/json"}
        )
        assert login.status == 503 and alert_of(login.body) == "database unavailable, try again later", login
        log = api.log()
        assert "Traceback" not in log, log
        [said] = lines_of(log, "tracker", "database unavailable")  # once, not at every attempt
        assert "serving anyway" in said and "/readyz answers 503" in said

        with TcpProxy(postgres_upstream(), port=port):
            poll_until(lambda: api.request("GET", "/readyz").status == 200, 30, "ready once the database came")
            found = poll_until(lambda: _PASSWORD.search(api.log()), 30, "the first admin made once it came")
            token = api.login("admin", found.group(1))
            answer = api.request("GET", "/api/5.0/async_status/1", headers={"Authorization": f"Bearer {token}"})
            assert answer.status == 404  # served from the database: no such job yet
            assert lines_of(api.log(), "tracker", "database answers after")
        assert "Traceback" not in api.log()


def test_a_consumer_started_before_its_database_acks_nothing_until_it_comes(tmp_path, postgres_url, amqp_names):
    store = open_job_store(make_engine(postgres_url))
    job = store.create_job()
    url, port = closed_port_for(postgres_url)
    settings = settings_for(url, AMQP_URL, tmp_path, amqp_names)
    consumer = ConsumerProcess(environment(settings), tmp_path / "consumer.log").start()
    try:
        consumer.wait_ready(timeout=60)  # subscribed: the broker is there
        endpoints = poll_until(lambda: _SERVING.search(consumer.output()), 30, "the consumer's endpoints").group(1)
        with Publisher(settings) as publisher:
            publisher.emit(job.id, "succeeded", "done while the database was away")
        time.sleep(AWAY_S)
        assert consumer.alive
        assert get(endpoints + "/healthz")[0] == 200
        status, body = get(endpoints + "/readyz")
        assert status == 503 and "database" in alert_of(body)
        assert store.get_job(job.id).status == merge.PENDING
        assert rabbitmq.ready_count(AMQP_URL, settings.dead_queue) == 0
        assert rabbitmq.unacked_count(settings.queue) == 1  # held, not acked
        log = consumer.output()
        assert "Traceback" not in log
        [started] = lines_of(log, "consumers.amqp", "starting anyway")
        assert "the database does not answer" in started
        assert len(lines_of(log, "consumers.writers", "database unavailable")) == 1  # not once per retry

        with TcpProxy(postgres_upstream(), port=port):
            poll_until(lambda: store.get_job(job.id).status == merge.SUCCEEDED, 60, "the event applied once it came")
            poll_until(lambda: get(endpoints + "/readyz")[0] == 200, 30, "ready once it came")
            assert rabbitmq.ready_count(AMQP_URL, settings.dead_queue) == 0
            assert total(scrape(endpoints + "/metrics"), "tracker_store_errors_total") >= 1
    finally:
        consumer.stop()
        store.engine.dispose()
    assert consumer.returncode == 0, consumer.tail()


def test_a_consumer_started_before_its_broker_subscribes_once_it_comes(tmp_path, postgres_url, amqp_names):
    store = open_job_store(make_engine(postgres_url))
    job = store.create_job()
    port = free_port()
    settings = settings_for(postgres_url, f"amqp://guest:guest@127.0.0.1:{port}/%2F", tmp_path, amqp_names)
    consumer = ConsumerProcess(environment(settings), tmp_path / "consumer.log").start()
    try:
        endpoints = poll_until(lambda: _SERVING.search(consumer.output()), 30, "the consumer's endpoints").group(1)
        time.sleep(AWAY_S)
        assert consumer.alive
        assert get(endpoints + "/healthz")[0] == 200
        status, body = get(endpoints + "/readyz")
        assert status == 503 and "RabbitMQ" in alert_of(body)
        log = consumer.output()
        assert "Traceback" not in log
        [said] = lines_of(log, "consumers.amqp", "broker unavailable")  # once, not at every attempt
        assert "reconnecting with back-off" in said

        broker = sa.make_url(AMQP_URL.replace("amqp://", "postgresql://", 1))  # only its host and port
        with TcpProxy((broker.host or "127.0.0.1", broker.port or 5672), port=port):
            consumer.wait_ready(timeout=60)
            with Publisher(settings.with_(amqp_url=AMQP_URL)) as publisher:
                publisher.emit(job.id, "failed", "once the broker came")
            poll_until(lambda: store.get_job(job.id).status == merge.FAILED, 60, "the event applied")
            assert get(endpoints + "/readyz")[0] == 200
            assert lines_of(consumer.output(), "consumers.amqp", "broker connection back after")
    finally:
        consumer.stop()
        store.engine.dispose()


def run_migrate(url: str, *args: str) -> subprocess.Popen[str]:
    settings = Settings(database_url=url, secret=TEST_SECRET)
    return subprocess.Popen(
        [sys.executable, "-m", "tracker.cli", "migrate", *args],
        env=environment(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_migrate_waits_for_a_database_that_comes_within_its_wait(new_database):
    target = new_database(False)
    url, port = closed_port_for(target)
    migrating = run_migrate(url, "--wait", "60")
    time.sleep(AWAY_S)
    assert migrating.poll() is None, migrating.communicate()
    with TcpProxy(postgres_upstream(), port=port):
        _out, err = migrating.communicate(timeout=60)
    assert migrating.returncode == 0, err
    assert "Traceback" not in err
    [said] = lines_of(err, "tracker.store.migrations", "database unavailable")
    assert "waiting up to 60 s for it" in said
    assert lines_of(err, "tracker.store.migrations", "database answers after")
    engine = make_engine(target)
    assert schema_problem(engine) is None
    engine.dispose()


@pytest.mark.parametrize(("args", "gives_up"), [(["--wait", "2"], "no answer within 2 s ("), ([], "no answer (")])
def test_migrate_gives_up_with_one_clear_line_when_the_database_does_not_come(args, gives_up):
    url, _port = closed_port_for(POSTGRES_URL)
    started = time.monotonic()
    migrating = run_migrate(url, *args)
    _out, err = migrating.communicate(timeout=60)
    assert migrating.returncode == 1
    assert time.monotonic() - started < 30
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"tracker: database unavailable: {gives_up}OperationalError: "), err
