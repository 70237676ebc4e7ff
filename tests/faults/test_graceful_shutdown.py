"""Scenario 4: SIGTERM under load: exit 0 within a bound, and nothing left uncommitted is lost."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from tests.faults import rabbitmq
from tests.faults.proxy import TcpProxy
from tests.faults.stream import (
    STOP_WITHIN_S,
    PacedPublishing,
    Record,
    check,
    conclude,
    create_jobs,
    plan_events,
    shuffle_with_duplicates,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]


def test_sigterm_under_load_exits_0_and_loses_nothing(scale, rng, fault_settings, pg_engine, store, spawn_consumer):
    job_ids = create_jobs(store, scale.pick(300, 2000), rng)
    stream = shuffle_with_duplicates(plan_events(job_ids, scale.pick(4000, 40000), rng), rng)
    consumers = [spawn_consumer(fault_settings, f"consumer-{n}") for n in range(2)]
    for consumer in consumers:
        consumer.wait_ready()
    duration_s, stops = scale.pick(18.0, 150.0), scale.pick(6, 50)
    record = Record()
    started = time.monotonic()
    publishing = PacedPublishing(fault_settings, stream, record, duration_s=duration_s, threads=4).start()

    slowest = 0.0
    gap = duration_s / (stops + 1)
    for n in range(stops):
        victim = consumers[n % 2]
        victim.wait_ready()  # its signal handlers are in place: a SIGTERM now is a request to stop
        time.sleep(rng.uniform(0.5 * gap, 1.5 * gap))
        code, took = victim.terminate(timeout=STOP_WITHIN_S)
        assert code == 0, f"exit status {code} after SIGTERM:\n{victim.tail()}"
        slowest = max(slowest, took)
        victim.start()
    publishing.join(timeout=duration_s + 120)

    conclude(
        scenario="4. graceful shutdown",
        done=f"SIGTERM to one of 2 consumers {stops} times under load, restarting it each time; "
        f"slowest exit {slowest:.1f} s",
        checked=f"exit status 0 within {STOP_WITHIN_S:.0f} s every time; every row = merge rule "
        "over the confirmed events; queue drained; nothing dead-lettered",
        settings=fault_settings,
        engine=pg_engine,
        job_ids=job_ids,
        record=record,
        consumers=consumers,
        started=started,
    )


def test_sigterm_while_the_database_is_away_exits_0_and_leaves_the_batch_queued(
    rng, fault_settings, pg_engine, store, spawn_consumer
):
    server = sa.make_url(fault_settings.database_url)
    job_ids = create_jobs(store, 50, rng)
    planned = plan_events(job_ids, 600, rng)
    record = Record()
    started = time.monotonic()
    with TcpProxy((server.host or "127.0.0.1", server.port or 5432)) as proxy:
        through_proxy = fault_settings.with_(
            database_url=server.set(port=proxy.port).render_as_string(hide_password=False)
        )
        first = spawn_consumer(through_proxy, "consumer-before")
        first.wait_ready()
        PacedPublishing(fault_settings, planned[:300], record, duration_s=1.0).start().join(timeout=60)
        _wait_for(lambda: rabbitmq.ready_count(fault_settings.amqp_url, fault_settings.queue) == 0)
        proxy.cut()
        # These reach the consumer, which cannot commit them: it holds them, retrying.
        PacedPublishing(fault_settings, planned[300:], record, duration_s=1.0).start().join(timeout=60)
        time.sleep(2.0)
        code, took = first.terminate(timeout=STOP_WITHIN_S)
        assert code == 0, f"exit status {code}:\n{first.tail()}"
        assert "abandoning" in first.output(), first.tail()
        assert not check(pg_engine, job_ids, record).holds, "the events sent during the outage were applied?"
        proxy.restore()
        second = spawn_consumer(through_proxy, "consumer-after")
        conclude(
            scenario="4b. SIGTERM during a database outage",
            done=f"SIGTERM to a consumer retrying a batch while PostgreSQL is cut; exit took {took:.1f} s; "
            "then a new consumer",
            checked=f"exit status 0 within {STOP_WITHIN_S:.0f} s; the batch in hand stays queued; "
            "every row = merge rule over the confirmed events; queue drained",
            settings=fault_settings,
            engine=pg_engine,
            job_ids=job_ids,
            record=record,
            consumers=[second],
            started=started,
        )


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
