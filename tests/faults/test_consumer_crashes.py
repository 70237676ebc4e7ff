"""Scenario 1: two consumers, one of them kill -9'd again and again mid-stream and restarted."""

from __future__ import annotations

import time

import pytest

from tests.faults.stream import PacedPublishing, Record, conclude, create_jobs, plan_events, shuffle_with_duplicates

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]


def test_killed_consumers_lose_nothing(scale, rng, fault_settings, pg_engine, store, spawn_consumer):
    job_ids = create_jobs(store, scale.pick(300, 2000), rng)
    stream = shuffle_with_duplicates(plan_events(job_ids, scale.pick(4000, 40000), rng), rng)
    # Batches gathered over 250 ms, so that every kill finds deliveries in hand, unacked.
    consumers = [
        spawn_consumer(fault_settings, f"consumer-{n}", TRACKER_FLUSH_MS="250", TRACKER_BATCH_SIZE="100")
        for n in range(2)
    ]
    for consumer in consumers:
        consumer.wait_ready()
    duration_s, kills = scale.pick(18.0, 150.0), scale.pick(10, 80)
    record = Record()
    started = time.monotonic()
    publishing = PacedPublishing(fault_settings, stream, record, duration_s=duration_s, threads=4).start()

    gap = duration_s / (kills + 1)
    for n in range(kills):
        # Gaps vary so the kill lands anywhere in a batch: while reading, writing, or acking.
        time.sleep(rng.uniform(0.5 * gap, 1.5 * gap))
        victim = consumers[n % 2]
        assert victim.alive, f"consumer died by itself ({victim.returncode}):\n{victim.tail()}"
        victim.kill()
        victim.start()
    publishing.join(timeout=duration_s + 120)

    conclude(
        scenario="1. consumer crashes",
        done=f"2 consumers (250 ms batches); kill -9 one of them {kills} times mid-stream, restarting it each time",
        checked="every row = merge rule over the confirmed events; queue drained; nothing dead-lettered",
        settings=fault_settings,
        engine=pg_engine,
        job_ids=job_ids,
        record=record,
        consumers=consumers,
        started=started,
    )
