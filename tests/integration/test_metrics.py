"""A real ``tracker consume``'s /metrics, /healthz and /readyz, and the API's /readyz, against real services.

The counters are read from the served text, parsed as Prometheus would, and must have moved by
exactly what was sent: so many events of each type applied, so many dead-lettered, each with its
reason code.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import re
import time
import uuid
from collections.abc import Callable, Iterator

import falcon.testing
import pika
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from api.app import get_app
from bench.processes import environment
from tests.conftest import AMQP_URL, TEST_SECRET
from tests.endpoints import get
from tests.faults.proxy import TcpProxy
from tests.metrics_text import scrape, total, value
from tests.processes import ConsumerProcess
from tracker import events, timefmt
from tracker.broker import declare_topology
from tracker.config import Settings
from tracker.store import make_engine, migrate, open_job_store
from tracker.store.migrations import newest_revision

pytestmark = [pytest.mark.rabbitmq]

# What an unauthenticated /readyz says: which check failed, nothing of where things are (issue 24).
DATABASE_DOWN = "the database does not answer"
SCHEMA_OLD = "the database schema is not the newest: run tracker migrate"
BROKER_DOWN = "not connected to RabbitMQ"

_SERVING = re.compile(r"serving /metrics, /healthz and /readyz on (http://\S+)")


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class RunningConsumer:
    def __init__(self, process: ConsumerProcess) -> None:
        self.process = process
        wait_until(lambda: _SERVING.search(process.output()) is not None, what="the consumer's endpoints")
        match = _SERVING.search(process.output())
        assert match is not None
        self.base = match.group(1)

    def readyz(self) -> tuple[int, object]:
        return get(self.base + "/readyz")


@pytest.fixture
def start_consumer(tmp_path: pathlib.Path) -> Iterator[Callable[..., RunningConsumer]]:
    started: list[ConsumerProcess] = []

    def start(settings: Settings, ready: bool = True) -> RunningConsumer:
        process = ConsumerProcess(environment(settings), tmp_path / f"consumer-{len(started)}.log").start()
        started.append(process)
        if ready:
            process.wait_ready()
        return RunningConsumer(process)

    yield start
    for process in started:
        if process.alive:
            process.terminate(timeout=20)


def publish(settings: Settings, bodies: list[tuple[str, bytes]]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = connection.channel()
    declare_topology(channel, settings)
    channel.confirm_delivery()
    for routing_key, body in bodies:
        channel.basic_publish(
            settings.exchange,
            routing_key,
            body,
            pika.BasicProperties(content_type=events.CONTENT_TYPE, delivery_mode=2),
            mandatory=True,
        )
    connection.close()


def event(job_id: int, kind: str) -> tuple[str, bytes]:
    wire = events.new_event(job_id, kind, f"{kind} of {job_id}", occurred_at=timefmt.now()).to_wire()
    return f"job.{kind}", json.dumps(wire).encode()


def test_the_counters_move_by_exactly_what_happened(settings: Settings, start_consumer) -> None:
    engine = make_engine(settings.database_url)
    store = open_job_store(engine)
    jobs = [store.create_job().id for _ in range(4)]
    consumer = start_consumer(settings)
    metrics_url = consumer.base + "/metrics"
    # Before any event: every series there at 0, and the gauges' first refresh.
    wait_until(lambda: value(scrape(metrics_url), "tracker_jobs", status="PENDING") == 4, what="tracker_jobs")
    before = scrape(metrics_url)
    assert total(before, "tracker_events_total") == 0
    assert value(before, "tracker_events_total", type="progress", outcome="applied") == 0
    assert value(before, "tracker_queue_messages_ready", queue="events") == 0
    assert value(before, "tracker_queue_messages_ready", queue="dead") == 0

    unknown = max(jobs) + 1000
    good = [event(job, "progress") for job in jobs for _ in range(3)]
    good += [event(jobs[0], "succeeded"), event(jobs[1], "failed"), event(jobs[2], "succeeded")]
    bad = [
        event(unknown, "progress"),
        event(unknown, "failed"),
        ("job.progress", b"{not json"),
        ("job.progress", b"{not json either"),
        ("job.progress", b"\xff\xfe"),
        ("job.progress", json.dumps({"job_id": jobs[0], "type": "progress"}).encode()),
        ("job.progress", b" " * (events.MAX_BODY_BYTES + 1)),
    ]
    publish(settings, good[:6] + bad[:4] + good[6:] + bad[4:])
    sent = len(good) + len(bad)
    wait_until(lambda: total(scrape(metrics_url), "tracker_events_total") == sent, what="every event counted")
    time.sleep(0.5)  # nothing more is counted after
    after = scrape(metrics_url)

    expected_events = {
        ("progress", "applied"): 12,
        ("succeeded", "applied"): 2,
        ("failed", "applied"): 1,
        ("progress", "dead_lettered"): 1,
        ("failed", "dead_lettered"): 1,
        ("unknown", "dead_lettered"): 5,
    }
    found_events = {
        (dict(labels)["type"], dict(labels)["outcome"]): v
        for (name, labels), v in after.items()
        if name == "tracker_events_total" and v
    }
    assert found_events == expected_events
    found_reasons = {
        dict(labels)["reason"]: v for (name, labels), v in after.items() if name == "tracker_dead_letters_total" and v
    }
    assert found_reasons == {"unknown_job": 2, "invalid_json": 2, "invalid_utf8": 1, "invalid_field": 1, "too_large": 1}
    # Every delivery was in exactly one batch; each batch was timed; lag is observed per batch applied.
    assert value(after, "tracker_batch_events_sum") == sent
    batches = value(after, "tracker_batch_events_count")
    assert value(after, "tracker_batch_duration_seconds_count") == batches >= 1
    assert 1 <= value(after, "tracker_event_lag_seconds_count") <= batches
    assert value(after, "tracker_event_lag_seconds_bucket", le="+Inf") == value(
        after, "tracker_event_lag_seconds_count"
    )
    assert value(after, "tracker_jobs_lost_total", reason="heartbeat") == 0
    engine.dispose()


def test_the_consumers_health_and_readiness_follow_the_broker(settings: Settings, start_consumer) -> None:
    with TcpProxy(("127.0.0.1", pika.URLParameters(AMQP_URL).port)) as proxy:
        through_proxy = settings.with_(amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F")
        consumer = start_consumer(through_proxy)
        assert get(consumer.base + "/healthz") == (200, {"status": "ok"})
        assert consumer.readyz() == (200, {"status": "ok"})
        proxy.cut()
        wait_until(lambda: consumer.readyz()[0] == 503, what="readyz 503 with the broker away")
        assert consumer.readyz()[1] == {"alerts": [{"text": BROKER_DOWN, "level": "error"}]}
        assert f"not ready: {BROKER_DOWN}" in consumer.process.output()
        assert get(consumer.base + "/healthz") == (200, {"status": "ok"})
        proxy.restore()
        wait_until(lambda: consumer.readyz()[0] == 200, timeout=60, what="readyz 200 with the broker back")
    assert get(consumer.base + "/nothing")[0] == 404


@pytest.mark.postgres
def test_the_consumers_readiness_follows_the_database(postgres_url: str, amqp_names, start_consumer) -> None:
    upstream = sa.make_url(postgres_url)
    with TcpProxy((upstream.host or "127.0.0.1", upstream.port or 5432)) as proxy:
        url = upstream.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        settings = Settings(database_url=url, amqp_url=AMQP_URL, metrics_bind="127.0.0.1:0", **amqp_names)
        consumer = start_consumer(settings)
        assert consumer.readyz() == (200, {"status": "ok"})
        proxy.cut()
        assert consumer.readyz() == (503, {"alerts": [{"text": DATABASE_DOWN, "level": "error"}]})
        consumer.readyz()
        proxy.restore()
        wait_until(lambda: consumer.readyz()[0] == 200, what="readyz 200 with the database back")
    # The detail is the log's, said once per change rather than once per probe.
    log = consumer.process.output()
    assert log.count(f"not ready: {DATABASE_DOWN} (OperationalError: ") == 1, log
    assert "ready again" in log


def migrated_to(url: str, revision: str) -> None:
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(pathlib.Path(migrate.__code__.co_filename).parent))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()


def old_schema_detail(revision: str) -> str:
    newest = newest_revision()
    return f"the database schema is at revision {revision}, not the newest ({newest}): run tracker migrate"


def test_the_consumers_readiness_wants_the_newest_schema(amqp_names, tmp_path: pathlib.Path, start_consumer) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrated_to(url, "0002")
    settings = Settings(database_url=url, amqp_url=AMQP_URL, metrics_bind="127.0.0.1:0", **amqp_names)
    consumer = start_consumer(settings)
    assert consumer.readyz() == (503, {"alerts": [{"text": SCHEMA_OLD, "level": "error"}]})
    assert old_schema_detail("0002") in consumer.process.output()
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    assert consumer.readyz() == (200, {"status": "ok"})


def api_readyz(database_url: str) -> falcon.testing.Result:
    settings = Settings(database_url=database_url, secret=TEST_SECRET)
    return falcon.testing.TestClient(get_app(settings)).simulate_get("/readyz")


def test_the_apis_readiness_wants_a_database_that_answers_and_names_no_host(caplog) -> None:
    closed = f"postgresql+psycopg://postgres@127.0.0.1:15999/{uuid.uuid4().hex}"
    with caplog.at_level("WARNING"):
        answer = api_readyz(closed)
    assert (answer.status_code, answer.json) == (503, {"alerts": [{"text": DATABASE_DOWN, "level": "error"}]})
    assert answer.headers["retry-after"]
    for detail in ("127.0.0.1", "15999", "OperationalError", "psycopg", "postgres"):
        assert detail not in answer.text
    # The detail is for the operator, in the log.
    assert f"not ready: {DATABASE_DOWN} (OperationalError: " in caplog.text and "15999" in caplog.text


def test_the_apis_readiness_wants_the_newest_schema(tmp_path: pathlib.Path, caplog) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrated_to(url, "0001")
    with caplog.at_level("WARNING"):
        answer = api_readyz(url)
    assert (answer.status_code, answer.json) == (503, {"alerts": [{"text": SCHEMA_OLD, "level": "error"}]})
    assert "0001" not in answer.text and old_schema_detail("0001") in caplog.text
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    assert (api_readyz(url).status_code, api_readyz(url).json) == (200, {"status": "ok"})


def test_job_durations_are_observed_once_as_each_job_ends_by_kind_up_to_the_cap(
    settings: Settings, start_consumer
) -> None:
    """SPEC §11: tracker_job_duration_seconds{kind,status}, start_time → end_time, once a job; kinds
    beyond TRACKER_METRICS_MAX_KINDS as other; a job without a kind with none."""
    engine = make_engine(settings.database_url)
    store = open_job_store(engine)
    kinds = ["export.csv", "deploy", "purge", "export.csv", None]
    jobs = [store.create_job(kind=kind) for kind in kinds]
    consumer = start_consumer(settings.with_(metrics_max_kinds=2))
    metrics_url = consumer.base + "/metrics"
    took = [3.0, 5.0, 7.0, 11.0, 13.0]
    ends = ["succeeded", "failed", "succeeded", "failed", "succeeded"]

    def ended(job, end: str, after_s: float) -> tuple[str, bytes]:
        at = job.start_time + dt.timedelta(seconds=after_s)
        return f"job.{end}", json.dumps(events.new_event(job.id, end, None, occurred_at=at).to_wire()).encode()

    finals = [ended(job, end, s) for job, end, s in zip(jobs, ends, took, strict=True)]
    # the same final event again, and a later and an earlier one: none ends a job again
    again = [finals[0], ended(jobs[0], "failed", 100.0), ended(jobs[1], "failed", 1.0)]
    publish(settings, finals)
    wait_until(lambda: total(scrape(metrics_url), "tracker_events_total") == len(finals), what="the final events")
    publish(settings, again)
    sent = len(finals) + len(again)
    wait_until(lambda: total(scrape(metrics_url), "tracker_events_total") == sent, what="every event counted")
    after = scrape(metrics_url)
    counts = {
        (dict(labels)["kind"], dict(labels)["status"]): v
        for (name, labels), v in after.items()
        if name == "tracker_job_duration_seconds_count"
    }
    assert counts == {
        ("export.csv", "SUCCEEDED"): 1,
        ("deploy", "FAILED"): 1,
        ("other", "SUCCEEDED"): 1,  # purge: the third kind, beyond the cap of 2
        ("export.csv", "FAILED"): 1,
        ("", "SUCCEEDED"): 1,  # no kind
    }
    sums = {
        (dict(labels)["kind"], dict(labels)["status"]): v
        for (name, labels), v in after.items()
        if name == "tracker_job_duration_seconds_sum"
    }
    assert sums == pytest.approx(
        {
            ("export.csv", "SUCCEEDED"): 3.0,
            ("deploy", "FAILED"): 5.0,
            ("other", "SUCCEEDED"): 7.0,
            ("export.csv", "FAILED"): 11.0,
            ("", "SUCCEEDED"): 13.0,
        },
        abs=1e-6,
    )
    assert value(after, "tracker_job_duration_seconds_bucket", kind="deploy", status="FAILED", le="5.0") == 1
    assert value(after, "tracker_job_duration_seconds_bucket", kind="deploy", status="FAILED", le="2.5") == 0
    engine.dispose()
