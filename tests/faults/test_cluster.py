"""Scenarios 6 and 6b (SPEC §10): a three-node RabbitMQ cluster, TRACKER_AMQP_URL listing all three.

6. The node leading the events queue is killed (SIGKILL) mid-stream, then brought back.
6b. All three nodes are restarted one after another (``rabbitmqctl stop``, start) under load.

And the dead-letter queue's promise (SPEC §3, §14): a dead letter survives the loss of the node
that led its quorum queue, and bad input is still dead-lettered while that node is down.

Two consumers (``tracker consume`` processes) and three publishing threads run throughout; every
confirmed event must end in its row as the merge rule says, nothing may be dead-lettered, and the
consumers must be back to full speed after the fault: folding a backlog at least half as fast as
before it (the margin is the machine's noise), each speed measured by pausing both consumers,
publishing a burst, and timing its folding from their own ``tracker_events_total``.

Each test has a cluster of its own (tests/cluster.py): three nodes started in parallel (about
25 s) and removed after it, so that a test that leaves a node unwell (a fault that went wrong) fails
alone, never the tests after it (one shared cluster cost them their quorum checks).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
import sqlalchemy as sa

from bench.processes import READY_LINE
from tests.cluster import Cluster
from tests.faults.conftest import nodes_of_our_own
from tests.faults.rabbitmq import ready_count
from tests.faults.stream import (
    PacedPublishing,
    Record,
    conclude,
    create_jobs,
    plan_events,
    shuffle_with_duplicates,
)
from tests.metrics_text import scrape, total
from tests.polling import poll_until
from tests.processes import ConsumerProcess, run_tracker
from tracker import events
from tracker.broker import connect, message_properties
from tracker.config import Settings
from tracker.store import JobStore

pytestmark = [pytest.mark.postgres]

_SERVING = re.compile(r"serving /metrics, /healthz and /readyz on (http://\S+)")
# After the fault, the consumers must fold a backlog at least this fast relative to before it.
# Full speed is 1.0; the margin is the noise of a shared 2-core machine, where the two figures
# are a few seconds apart and other work comes and goes.
FULL_SPEED_RATIO = 0.5


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """Three RabbitMQ nodes of the test's own, joined; removed after it, however it ends."""
    yield from nodes_of_our_own(3)


@pytest.fixture
def cluster_settings(cluster: Cluster, settings_on: Callable[[str], Settings]) -> Settings:
    """The session's PostgreSQL, the cluster's three nodes in TRACKER_AMQP_URL, this test's own names."""
    return settings_on(cluster.url)


class Resends(logging.Handler):
    """Counts the publishers' "publish of … failed; retrying" warnings: events sent again."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("publish of "):
            self.count += 1

    @classmethod
    @contextlib.contextmanager
    def counted(cls) -> Iterator[Resends]:
        handler = cls()
        publisher_log = logging.getLogger("tracker.publisher")
        publisher_log.addHandler(handler)
        try:
            yield handler
        finally:
            publisher_log.removeHandler(handler)


def moves(consumer: ConsumerProcess) -> int:
    """How often the consumer subscribed again after its first subscription (on another node)."""
    return consumer.output().count(READY_LINE) - 1


class Folding:
    """How fast the consumers fold a backlog, in events a second."""

    def __init__(self, settings: Settings, consumers: Sequence[ConsumerProcess], record: Record) -> None:
        self._settings = settings
        self._consumers = consumers
        self._record = record
        self._urls = [self._metrics_url(consumer) for consumer in consumers]

    @staticmethod
    def _metrics_url(consumer: ConsumerProcess) -> str:
        found = poll_until(lambda: _SERVING.search(consumer.output()), 30, "the consumer's metrics address")
        return found.group(1) + "/metrics"

    def handled(self) -> float:
        """Events the consumers have committed (applied or dead-lettered) so far, all together."""
        return sum(total(scrape(url), "tracker_events_total") for url in self._urls)

    def rate(self, burst: Sequence[events.Event], timeout: float = 300.0) -> float:
        """Pause both consumers, publish ``burst`` (recorded), resume them; events folded a second."""
        before = self.handled()
        for consumer in self._consumers:
            os.kill(consumer.pid, signal.SIGSTOP)
        try:
            PacedPublishing(self._settings, burst, self._record, duration_s=0, threads=4).start().join(timeout)
        finally:
            for consumer in self._consumers:
                os.kill(consumer.pid, signal.SIGCONT)
        resumed = time.monotonic()
        poll_until(lambda: self.handled() >= before + len(burst), timeout, "the burst folded", interval=0.05)
        return len(burst) / (time.monotonic() - resumed)


def _settle(cluster: Cluster, settings: Settings, folding: Folding, record: Record, timeout: float = 300.0) -> None:
    """Wait until the consumers have handled every confirmed send and the queue holds nothing."""
    poll_until(
        lambda: (
            folding.handled() >= record.confirmed_sends
            and ready_count(settings.amqp_url, settings.queue) == 0
            and cluster.unacked_count(settings.queue) == 0
        ),
        timeout,
        "every confirmed send handled, the queue empty",
        0.5,
    )


def _scenario(
    *,
    cluster: Cluster,
    settings: Settings,
    scale,
    rng: random.Random,
    store: JobStore,
    pg_engine: sa.Engine,
    spawn_consumer: Callable[..., ConsumerProcess],
    duration_s: float,
    fault: Callable[[Sequence[ConsumerProcess]], str],
    scenario: str,
    checked: str,
    every_client_moves: bool = False,
) -> None:
    job_ids = create_jobs(store, scale.pick(300, 2000), rng)
    stream = shuffle_with_duplicates(plan_events(job_ids, scale.pick(3000, 30000), rng), rng)
    burst, burst_jobs = scale.pick(3000, 10000), scale.pick(300, 1000)

    def new_burst(size: int = burst) -> list[events.Event]:
        # Each burst on jobs of its own, all alike: the same work before the fault as after it
        # (events on jobs the stream has finished would be cheaper to fold).
        jobs = create_jobs(store, burst_jobs, rng)
        job_ids.extend(jobs)
        return plan_events(jobs, size, rng)

    consumers = [spawn_consumer(settings, f"consumer-{n}") for n in range(2)]
    for consumer in consumers:
        consumer.wait_ready(timeout=60)
    members = cluster.members(settings.queue)
    assert members == sorted(node.name for node in cluster.nodes), f"events queue on {members} only"

    record = Record()
    started = time.monotonic()
    folding = Folding(settings, consumers, record)
    folding.rate(new_burst(burst // 4))  # the first batches of fresh processes are slow: not full speed yet
    # Full speed: the better of two measurements (the machine is shared, and one can be unlucky).
    before = max(folding.rate(new_burst()) for _ in range(2))
    with Resends.counted() as resends:
        publishing = PacedPublishing(settings, stream, record, duration_s=duration_s, threads=3).start()
        done = fault(consumers)
        publishing.join(timeout=duration_s + 300)
    assert all(c.alive for c in consumers), "a consumer exited instead of moving to another node"
    _settle(cluster, settings, folding, record)
    moved = [moves(consumer) for consumer in consumers]
    print(f"{scenario}: consumers subscribed again {moved} times; publishers sent {resends.count} events again")
    if every_client_moves:
        assert all(moved), f"a consumer never moved although every node was restarted: {moved}"
    # Back to full speed: measured up to three times, until the consumers are there.
    after = 0.0
    for _ in range(3):
        after = max(after, folding.rate(new_burst()))
        if after >= FULL_SPEED_RATIO * before:
            break
    ratio = after / before
    print(f"{scenario}: folding {before:.0f} events/s before, {after:.0f} after ({ratio:.2f}x)")
    assert cluster.members(settings.queue) == members, "the events queue lost a member for good"

    conclude(
        scenario=scenario,
        done=f"{done}; 2 consumers (moved to another node {sum(moved)} times), 3 publishing threads "
        f"({resends.count} sends retried); backlog folded at {before:.0f}/s before, {after:.0f}/s after ({ratio:.2f}x)",
        checked=checked,
        settings=settings,
        engine=pg_engine,
        job_ids=job_ids,
        record=record,
        consumers=consumers,
        started=started,
        timeout=180,
        unacked=cluster.unacked_count,
    )
    assert ratio >= FULL_SPEED_RATIO, f"consumers fold {after:.0f}/s after the fault, {before:.0f}/s before"


def test_killing_the_queue_leader_mid_stream_loses_nothing(
    cluster, cluster_settings, scale, rng, store, pg_engine, spawn_consumer
):
    duration_s, down_s, kills = scale.pick(20.0, 150.0), scale.pick(5.0, 20.0), scale.pick(1, 3)

    def kill_the_leader(consumers: Sequence[ConsumerProcess]) -> str:
        on_it: collections.Counter[str] = collections.Counter()
        elected, boots, resumed = [], [], []
        for _ in range(kills):
            time.sleep(duration_s / (kills + 1) * rng.uniform(0.6, 1.0))
            leader = cluster.leader(cluster_settings.queue)
            clients = cluster.clients(leader)
            on_it += clients
            subscribed = sum(moves(consumer) for consumer in consumers)
            leader.kill()
            killed_at = time.monotonic()
            poll_until(
                lambda: cluster.leader_now(cluster_settings.queue) not in ("", leader.name),  # noqa: B023
                60,
                "a new leader of the events queue",
                interval=0.2,
            )
            elected.append(time.monotonic() - killed_at)
            # The consumers that were on the killed node subscribe again on another while it is
            # down: nothing of theirs (the dead-letter queue included) may wait for it.
            poll_until(
                lambda: sum(map(moves, consumers)) >= subscribed + clients["tracker-consumer"],  # noqa: B023
                60,
                f"{clients['tracker-consumer']} consumer(s) on another node while {leader.name} is down",
                interval=0.2,
            )
            resumed.append(time.monotonic() - killed_at)
            time.sleep(max(0.0, down_s - resumed[-1]))
            leader.start()
            boots.append(leader.wait_answering())
        named = ", ".join(f"{count} {name.removeprefix('tracker-')}" for name, count in sorted(on_it.items()))
        return (
            f"SIGKILL of the events queue's leader mid-stream {kills} time(s), with {named or 'no'} "
            f"connections on it in all (another node led within {max(elected):.1f} s, its consumers on "
            f"another node within {max(resumed):.1f} s); each back after {down_s:.0f} s + {max(boots):.0f} s boot"
        )

    _scenario(
        cluster=cluster,
        settings=cluster_settings,
        scale=scale,
        rng=rng,
        store=store,
        pg_engine=pg_engine,
        spawn_consumer=spawn_consumer,
        duration_s=duration_s,
        fault=kill_the_leader,
        scenario="6. cluster: queue leader killed",
        checked="publishers and consumers move to the other nodes by themselves; every row = merge rule "
        "over the confirmed events; queue drained; nothing dead-lettered; folding back to full speed",
    )


def test_a_rolling_restart_of_every_node_under_load_loses_nothing(
    cluster, cluster_settings, scale, rng, store, pg_engine, spawn_consumer
):
    duration_s, rounds = scale.pick(45.0, 180.0), scale.pick(1, 2)

    def restart_each_node(_consumers: Sequence[ConsumerProcess]) -> str:
        took = []
        for node in [node for _ in range(rounds) for node in rng.sample(cluster.nodes, len(cluster.nodes))]:
            time.sleep(duration_s / (8 * rounds) * rng.uniform(0.5, 1.0))
            cluster.wait_quorum_safe(node)  # as an operator would: never take the majority away
            stopped_at = time.monotonic()
            node.stop()
            node.start()
            node.wait_answering()
            took.append(time.monotonic() - stopped_at)
        return (
            f"rolling restart (rabbitmqctl stop, start) of all 3 nodes under load, {rounds} time(s); "
            f"each node away {max(took):.0f} s or less"
        )

    _scenario(
        cluster=cluster,
        settings=cluster_settings,
        scale=scale,
        rng=rng,
        store=store,
        pg_engine=pg_engine,
        spawn_consumer=spawn_consumer,
        duration_s=duration_s,
        fault=restart_each_node,
        every_client_moves=True,
        scenario="6b. cluster: rolling restart",
        checked="publishers and consumers move between nodes by themselves; every row = merge rule over "
        "the confirmed events; queue drained; nothing dead-lettered; folding back to full speed",
    )


def publish_bad(settings: Settings, bodies: Sequence[tuple[str, bytes]]) -> None:
    """Publish ``(message_id, body)`` pairs to the events exchange, each confirmed, through a node that answers."""
    connection = connect(settings.amqp_url, "test-bad-input")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for message_id, body in bodies:
            channel.basic_publish(
                settings.exchange, "job.progress", body, message_properties(message_id), mandatory=True
            )
    finally:
        connection.close()


def test_a_dead_letter_survives_the_loss_of_the_node_that_held_it(cluster, cluster_settings, spawn_consumer):
    settings = cluster_settings
    consumer = spawn_consumer(settings, "consumer")
    consumer.wait_ready(timeout=60)
    everyone = sorted(node.name for node in cluster.nodes)
    assert cluster.members(settings.dead_queue) == everyone, "the dead queue is not replicated on every node"
    publish_bad(settings, [("before-1", b"{not json"), ("before-2", b'{"job_id": 1}')])
    poll_until(lambda: ready_count(settings.amqp_url, settings.dead_queue) == 2, 30, "two dead letters")

    holder = cluster.leader(settings.dead_queue)
    holder.kill()
    try:
        poll_until(
            lambda: cluster.leader_now(settings.dead_queue) not in ("", holder.name),
            60,
            "a new leader of the dead queue",
            interval=0.2,
        )
        # Counted, and read by `tracker dead show`, from the nodes left.
        assert ready_count(settings.amqp_url, settings.dead_queue) == 2
        shown = run_tracker(settings, "dead", "show")
        assert "invalid_json: body is not valid JSON" in shown
        assert "invalid_field: " in shown and "event_id: is required" in shown
        assert shown.endswith(f"shown 2 (any reason) of 2 in {settings.dead_queue}; they stay there\n")
        # And dead-lettering goes on without the node.
        publish_bad(settings, [("while-down", b"[]")])
        poll_until(lambda: ready_count(settings.amqp_url, settings.dead_queue) == 3, 60, "bad input dead-lettered")
        assert consumer.alive, consumer.tail()
    finally:
        holder.start()
        holder.wait_answering()
    assert cluster.members(settings.dead_queue) == everyone
    assert consumer.terminate(timeout=15)[0] == 0
