"""Scenario 3: PostgreSQL unreachable for over ten seconds mid-stream, through a proxy we cut."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from tests.faults import rabbitmq
from tests.faults.proxy import TcpProxy
from tests.faults.stream import PacedPublishing, Record, conclude, create_jobs, plan_events, shuffle_with_duplicates
from tracker.config import Settings

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

PUBLISHING_THREADS = 2
SETTLE_S = 1.5  # after the cut, a batch committed just before it may still be acked; then nothing
# Small batches and prefetch: many batches in flight when the cut comes, and few deliveries
# held by the consumers, so the count of what the broker holds is tight (see held_at_most).
CONSUMER_ENV = {"TRACKER_BATCH_SIZE": "50", "TRACKER_PREFETCH": "150"}


def test_database_outage_acks_nothing_and_loses_nothing(scale, rng, fault_settings, pg_engine, store, spawn_consumer):
    server = sa.make_url(fault_settings.database_url)
    outage_s, outages = scale.pick(12.0, 30.0), scale.pick(1, 3)
    # Between outages, longer than the consumers' longest back-off (15 s), so they resume.
    gaps = [rng.uniform(3.0, 6.0)] + [rng.uniform(20.0, 25.0) for _ in range(outages - 1)]
    duration_s = sum(gaps) + outages * (outage_s + 3.0) + 5.0
    job_ids = create_jobs(store, scale.pick(300, 2000), rng)
    stream = shuffle_with_duplicates(plan_events(job_ids, scale.pick(3000, 30000), rng), rng)
    with TcpProxy((server.host or "127.0.0.1", server.port or 5432)) as proxy:
        through_proxy = fault_settings.with_(
            database_url=server.set(port=proxy.port).render_as_string(hide_password=False)
        )
        consumers = [spawn_consumer(through_proxy, f"consumer-{n}", **CONSUMER_ENV) for n in range(2)]
        for consumer in consumers:
            consumer.wait_ready()
        record = Record()
        started = time.monotonic()
        publishing = PacedPublishing(
            fault_settings, stream, record, duration_s=duration_s, threads=PUBLISHING_THREADS
        ).start()
        for gap in gaps:
            time.sleep(gap)
            proxy.cut()
            cut_at = time.monotonic()
            time.sleep(SETTLE_S)
            held_before = held_at_most(fault_settings)
            sent_before = record.confirmed_sends
            time.sleep(max(0.0, cut_at + outage_s - time.monotonic()))
            sent_during = record.confirmed_sends - sent_before
            held_after = held_at_least(fault_settings)
            dead = rabbitmq.ready_count(fault_settings.amqp_url, fault_settings.dead_queue)
            proxy.restore()

            logs = "\n".join(c.tail(15) for c in consumers)
            assert held_after - held_before >= sent_during - PUBLISHING_THREADS, (
                f"the broker held at most {held_before} messages, then at least {held_after}, while "
                f"{sent_during} more were confirmed: something was acked during the outage\n{logs}"
            )
            assert dead == 0, f"{dead} messages dead-lettered during a database outage\n{logs}"
            assert all(c.alive for c in consumers), f"a consumer exited during the outage\n{logs}"
        publishing.join(timeout=duration_s + 120)

        conclude(
            scenario="3. database outage",
            done=f"all PostgreSQL connections of 2 consumers (batches of 50) cut and refused by a "
            f"TCP proxy, {outages} time(s) for {outage_s:.0f} s mid-stream",
            checked="nothing acked or dead-lettered during the outage; consumers resume alone; "
            "every row = merge rule over the confirmed events; queue drained",
            settings=fault_settings,
            engine=pg_engine,
            job_ids=job_ids,
            record=record,
            consumers=consumers,
            started=started,
        )


# What the broker holds for a queue is its ready messages plus those delivered and not acked,
# read one after the other. While nothing is acked, deliveries only move messages from ready to
# unacked: reading unacked first can only miss such moves, reading ready first can only count
# them twice. So, if nothing is acked, held_at_least() later minus held_at_most() earlier is at
# least what was published in between.


def held_at_most(settings: Settings) -> int:
    unacked = rabbitmq.unacked_count(settings.queue)
    return unacked + rabbitmq.ready_count(settings.amqp_url, settings.queue)


def held_at_least(settings: Settings) -> int:
    ready = rabbitmq.ready_count(settings.amqp_url, settings.queue)
    return ready + rabbitmq.unacked_count(settings.queue)
