"""Scenario 2: the RabbitMQ application stopped and started mid-stream; everyone reconnects alone.

The broker is a node of this test's own (tests/cluster.py: a one-node "cluster" started from the
installed server, removed afterwards): the machine's own node serves other test runs meanwhile,
and is never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.cluster import Cluster
from tests.faults.conftest import nodes_of_our_own
from tests.faults.stream import PacedPublishing, Record, conclude, create_jobs, plan_events, shuffle_with_duplicates
from tracker.config import Settings

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def broker() -> Iterator[Cluster]:
    """A RabbitMQ node of this test's own, to restart; removed after the test, however it ends."""
    yield from nodes_of_our_own(1)


def test_broker_restarts_lose_no_confirmed_event(
    broker: Cluster, settings_on: Callable[[str], Settings], scale, rng, pg_engine, store, spawn_consumer
):
    (node,) = broker.nodes
    settings = settings_on(broker.url)
    job_ids = create_jobs(store, scale.pick(300, 2000), rng)
    stream = shuffle_with_duplicates(plan_events(job_ids, scale.pick(3000, 30000), rng), rng)
    consumers = [spawn_consumer(settings, f"consumer-{n}") for n in range(2)]
    for consumer in consumers:
        consumer.wait_ready()
    duration_s, restarts, down_s = scale.pick(20.0, 150.0), scale.pick(1, 4), scale.pick(3.0, 6.0)
    record = Record()
    started = time.monotonic()
    publishing = PacedPublishing(settings, stream, record, duration_s=duration_s, threads=3).start()

    outages = []
    for _ in range(restarts):
        time.sleep(duration_s / (restarts + 1) * rng.uniform(0.6, 1.0))
        stopped_at = time.monotonic()
        node.ctl("stop_app")  # the Erlang node stays up; AMQP connections are closed and refused
        time.sleep(down_s)
        node.ctl("start_app")
        node.wait_answering()
        outages.append(time.monotonic() - stopped_at)
        assert all(c.alive for c in consumers), "a consumer exited instead of reconnecting"
    publishing.join(timeout=duration_s + 300)

    longest = max(outages)
    conclude(
        scenario="2. broker restart",
        done=f"rabbitmqctl stop_app / start_app of the test's own node {restarts} time(s) mid-stream "
        f"(broker away up to {longest:.0f} s); 2 consumers, 3 publishing threads",
        checked="consumers and publishers reconnect by themselves; every row = merge rule over "
        "the confirmed events; queue drained; nothing dead-lettered",
        settings=settings,
        engine=pg_engine,
        job_ids=job_ids,
        record=record,
        consumers=consumers,
        started=started,
        timeout=180,
        unacked=broker.unacked_count,
    )
