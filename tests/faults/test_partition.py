"""Scenario 6c (SPEC §10): a network partition. One node of a three-node cluster is cut off from
the other two mid-stream while it keeps running, for longer than the Erlang net tick, then
healed; bad input published meanwhile must be dead-lettered once, with its reason.

The nodes are this module's own (tests/cluster.py), configured as a production cluster would be,
with ``cluster_partition_handling = pause_minority``: the node cut off sees it is alone, stops
serving (its clients' connections close, so they move to the other two) and comes back by
itself once it can reach them again. ``net_ticktime`` is short (8 s), so that the partition is
seen within about 10 s and the test stays bounded. The cut is nftables rules dropping the node's
Erlang distribution traffic on loopback (``Cluster.partitioned``), removed afterwards whatever
happens: the test runs as root.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator

import pytest

from tests.cluster import Cluster, ClusterUnavailable, Node, partition_problem
from tests.faults.conftest import nodes_of_our_own
from tests.faults.stream import PacedPublishing, Record, conclude, create_jobs, plan_events, shuffle_with_duplicates
from tests.polling import poll_until
from tracker import broker, events
from tracker.cli.deadletters import DeadLetter
from tracker.config import Settings
from tracker.reasons import reason_code

pytestmark = [pytest.mark.postgres]

NET_TICKTIME_S = 8
NO_SUCH_JOB = 9_000_000_000_000_000_000


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Three nodes of this module's own with a short net tick, joined; removed after, however it ends."""
    problem = partition_problem()
    if problem is not None:
        pytest.fail(f"a network partition cannot be made here: {problem}")
    yield from nodes_of_our_own(3, net_ticktime=NET_TICKTIME_S)


def bad_input(round_: int) -> list[tuple[str, bytes, str]]:
    """(message_id, body, reason code) of messages that break SPEC §3, one of each kind."""
    unknown, _ = broker.event_message(events.new_event(NO_SUCH_JOB, "progress", "no such job"))
    return [
        (f"cut-{round_}-json", b"{not json", "invalid_json"),
        (f"cut-{round_}-job", unknown, "unknown_job"),
        (f"cut-{round_}-field", b'{"job_id": 1, "type": "progress"}', "invalid_field"),
    ]


def publish_through(nodes: list[Node], messages: list[tuple[str, bytes, str]], settings: Settings) -> None:
    """Publish each message to the events exchange through one of ``nodes``, confirmed."""
    url = ",".join(node.url for node in nodes)
    connection = broker.connect(url, "test-bad-input")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for message_id, body, _ in messages:
            properties = broker.message_properties(message_id)
            channel.basic_publish(settings.exchange, "job.progress", body, properties, mandatory=True)
    finally:
        connection.close()


def led_by_others(cluster: Cluster, queue: str, victim: Node) -> bool:
    """Whether ``queue`` has a leader other than ``victim`` now (a command may fail meanwhile)."""
    try:
        return cluster.leader_now(queue) not in ("", victim.name)
    except ClusterUnavailable:
        return False


def whole_again(cluster: Cluster) -> bool:
    """Every node running in the cluster again (a command may fail while the node rejoins)."""
    try:
        return len(cluster.running_nodes()) == len(cluster.nodes)
    except ClusterUnavailable:  # rabbitmqctl failed meanwhile: not yet
        return False


def dead_letters(settings: Settings) -> list[DeadLetter]:
    """Every message of the dead queue, taken out."""
    connection = broker.connect(settings.amqp_url, "test-dead-letters")
    try:
        channel = connection.channel()
        taken = []
        while (got := channel.basic_get(settings.dead_queue, auto_ack=True))[0] is not None:
            method, properties, body = got
            taken.append(DeadLetter.from_message(method.routing_key, properties, body))
        return taken
    finally:
        connection.close()


def test_a_node_cut_off_mid_stream_then_healed_loses_nothing(
    cluster, settings_on, scale, rng, store, pg_engine, spawn_consumer
):
    settings = settings_on(cluster.url)
    duration_s, cut_s, cuts = scale.pick(45.0, 300.0), scale.pick(25.0, 40.0), scale.pick(1, 3)
    job_ids = create_jobs(store, scale.pick(300, 2000), rng)
    stream = shuffle_with_duplicates(plan_events(job_ids, scale.pick(3000, 30000), rng), rng)

    consumers = [spawn_consumer(settings, f"consumer-{n}") for n in range(2)]
    for consumer in consumers:
        consumer.wait_ready(timeout=60)
    everyone = sorted(node.name for node in cluster.nodes)
    assert cluster.members(settings.queue) == everyone and cluster.members(settings.dead_queue) == everyone

    record = Record()
    started = time.monotonic()
    bad: list[tuple[str, bytes, str]] = []
    paused, healed, held = [], [], []
    led_the_dead_queue = 0
    publishing = PacedPublishing(settings, stream, record, duration_s=duration_s, threads=3).start()
    for round_ in range(cuts):
        time.sleep(duration_s / (cuts + 1) * rng.uniform(0.5, 0.8))
        victim = cluster.leader(settings.queue)  # the events queue's leader: the most to lose
        led_the_dead_queue += cluster.leader(settings.dead_queue) is victim
        majority = [node for node in cluster.nodes if node is not victim]
        with cluster.partitioned(victim):
            cut_at = time.monotonic()
            # pause_minority: once the net tick has passed, the node sees it is alone and stops serving.
            poll_until(lambda: not victim.answering(), 4 * NET_TICKTIME_S, f"{victim.name} paused", interval=0.5)  # noqa: B023
            paused.append(time.monotonic() - cut_at)
            # Bad input once the two have a leader for each queue: a publish meanwhile may be
            # nacked, and sent again (as the worker library does) it could be there twice.
            for queue in (settings.queue, settings.dead_queue):
                poll_until(lambda: led_by_others(cluster, queue, victim), 60, f"a new leader of {queue}", 0.5)  # noqa: B023
            messages = bad_input(round_)
            publish_through(majority, messages, settings)
            bad.extend(messages)
            time.sleep(max(0.0, cut_at + cut_s - time.monotonic()))
            held.append(time.monotonic() - cut_at)
        healed_at = time.monotonic()
        poll_until(victim.answering, 120, f"{victim.name} serving again after the partition", interval=0.5)
        poll_until(lambda: whole_again(cluster), 120, "every node running in the cluster again", interval=1.0)
        healed.append(time.monotonic() - healed_at)
    publishing.join(timeout=duration_s + 300)
    assert all(consumer.alive for consumer in consumers), "a consumer exited during the partition"
    assert cluster.members(settings.queue) == everyone, "the events queue lost a member for good"

    conclude(
        scenario="6c. cluster: a node cut off (network partition)",
        done=f"the events queue's leader cut off from the other two nodes {cuts} time(s) mid-stream "
        f"({led_the_dead_queue} of them leading the dead queue too), its Erlang "
        f"distribution traffic dropped (nftables), net_ticktime {NET_TICKTIME_S} s, pause_minority: it paused "
        f"within {max(paused):.1f} s, was held apart {max(held):.0f} s, served again {max(healed):.1f} s after "
        f"the heal; {len(bad)} bad messages published meanwhile; 2 consumers, 3 publishing threads",
        checked="every row = merge rule over the confirmed events; queue drained; each bad message "
        "dead-lettered once, with its reason; nothing else dead-lettered",
        settings=settings,
        engine=pg_engine,
        job_ids=job_ids,
        record=record,
        consumers=consumers,
        started=started,
        expected_dead=len(bad),
        timeout=180,
        unacked=cluster.unacked_count,
    )
    letters = dead_letters(settings)
    assert collections.Counter(letter.message_id for letter in letters) == {message_id: 1 for message_id, _, _ in bad}
    codes = {message_id: code for message_id, _, code in bad}
    for letter in letters:
        assert letter.message_id is not None
        assert reason_code(letter.reason) == codes[letter.message_id], letter.reason
        assert letter.headers[broker.ROUTING_KEY_HEADER] == "job.progress"
