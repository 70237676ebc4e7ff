"""`tracker dead show|replay|drop` against a real RabbitMQ (and, for the first test, a real consumer):
replay applies an event whose job now exists, a SIGKILL mid-replay loses nothing, drop removes only
what it names."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import threading
import time

import pika
import pytest

from bench.processes import environment
from tests.processes import ConsumerProcess, run_tracker
from tracker import events
from tracker.broker import routing_key
from tracker.config import Settings
from tracker.store import open_job_store

pytestmark = [pytest.mark.rabbitmq, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

F_SETPIPE_SZ = 1031  # Linux: set a pipe's buffer size


def ready(raw_channel, queue: str) -> int:
    return raw_channel.queue_declare(queue, passive=True).method.message_count


def wait_for(condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def publish_event(raw_channel, settings: Settings, event: events.Event) -> None:
    properties = pika.BasicProperties(content_type=events.CONTENT_TYPE, delivery_mode=2, message_id=event.event_id)
    raw_channel.basic_publish(
        settings.exchange, routing_key(event.type), json.dumps(event.to_wire()).encode(), properties, mandatory=True
    )


def publish_dead(raw_channel, settings: Settings, body: bytes, message_id: str, reason: str, key: str) -> None:
    """A dead letter as the consumer makes one: the reason and the routing key in headers."""
    headers = {"x-tracker-reason": reason, "x-tracker-routing-key": key}
    properties = pika.BasicProperties(
        content_type=events.CONTENT_TYPE, delivery_mode=2, message_id=message_id, headers=headers
    )
    raw_channel.basic_publish(settings.dead_exchange, key, body, properties, mandatory=True)


def drain(raw_channel, queue: str) -> list[tuple[str, bytes, dict]]:
    taken = []
    while True:
        method, properties, body = raw_channel.basic_get(queue, auto_ack=True)
        if method is None:
            return taken
        taken.append((properties.message_id, body, properties.headers or {}))


def test_an_event_for_a_job_created_later_is_replayed_and_applied(settings, engine, raw_channel, tmp_path):
    consumer = ConsumerProcess(environment(settings), tmp_path / "consumer.log").start()
    try:
        consumer.wait_ready()
        store = open_job_store(engine)
        next_id = store.create_job("placeholder").id + 1  # the id the job below will get
        early = events.new_event(next_id, "succeeded", "Deployed.", seq=1)
        publish_event(raw_channel, settings, early)
        raw_channel.basic_publish(
            settings.exchange,
            routing_key("progress"),
            b"{not json",
            pika.BasicProperties(content_type=events.CONTENT_TYPE, message_id="broken"),
        )
        wait_for(lambda: ready(raw_channel, settings.dead_queue) == 2, what="two dead letters")

        counted = run_tracker(settings, "dead")
        assert f"unknown_job            job {next_id} does not exist" in counted
        assert "invalid_json           body is not valid JSON" in counted
        shown = run_tracker(settings, "dead", "show", "--reason", "unknown_job")
        assert shown.splitlines() == [
            f"unknown_job: job {next_id} does not exist",
            f"    routing key job.succeeded, message_id {early.event_id}, {len(json.dumps(early.to_wire()))} bytes",
            "    " + (body if len(body := json.dumps(early.to_wire())) <= 160 else body[:160] + "…"),
            f"shown 1 (reason unknown_job) of 2 in {settings.dead_queue}; they stay there",
        ]
        assert ready(raw_channel, settings.dead_queue) == 2

        job = store.create_job("Deploying.")
        assert job.id == next_id
        replayed = run_tracker(settings, "dead", "replay", "--reason", "unknown_job")
        assert replayed == (
            f"replayed 1 (reason unknown_job) of 2 in {settings.dead_queue}, to exchange {settings.exchange}\n"
        )
        wait_for(lambda: store.get_job(job.id).status == "SUCCEEDED", what="the replayed event to apply")
        assert store.get_job(job.id).message == "Deployed."

        assert ready(raw_channel, settings.dead_queue) == 1  # the broken one is still there
        assert "shown 1 (any reason) of 1" in run_tracker(settings, "dead", "show")
        assert run_tracker(settings, "dead", "drop", "--reason", "invalid_json").startswith(
            "dropped 1 (reason invalid_json)"
        )
        assert ready(raw_channel, settings.dead_queue) == 0
    finally:
        consumer.terminate(timeout=20)


def test_drop_removes_only_what_it_names_and_no_more_than_the_limit(settings, raw_channel):
    for n in range(3):
        publish_dead(raw_channel, settings, b"{}", f"job-{n}", f"job {n + 1} does not exist", "job.progress")
        publish_dead(
            raw_channel, settings, b"[", f"json-{n}", "body is not valid JSON: Expecting value", "job.progress"
        )
    publish_dead(raw_channel, settings, b"{}", "field", "job_id: is required", "job.failed")

    assert run_tracker(settings, "dead", "drop", "--reason", "unknown_job", "--limit", "2", "-v").splitlines() == [
        "dropped job-0 job.progress unknown_job: job 1 does not exist",
        "dropped job-1 job.progress unknown_job: job 2 does not exist",
        f"dropped 2 (reason unknown_job) of 7 in {settings.dead_queue}",
    ]
    assert run_tracker(settings, "dead", "drop", "--reason", "job 3 does not exist").startswith("dropped 1 ")
    assert run_tracker(settings, "dead", "drop", "--reason", "unknown_job").startswith("dropped 0 ")
    left = drain(raw_channel, settings.dead_queue)
    assert sorted(message_id for message_id, _, _ in left) == ["field", "json-0", "json-1", "json-2"]


def test_an_unknown_code_is_refused_before_anything_is_touched(settings, raw_channel):
    publish_dead(raw_channel, settings, b"{}", "one", "job 1 does not exist", "job.progress")
    done = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "dead", "drop", "--reason", "unknown_jobs"],
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "unknown reason code 'unknown_jobs'" in done.stderr
    assert ready(raw_channel, settings.dead_queue) == 1


def test_a_replay_killed_part_way_loses_nothing_and_finishes_when_run_again(settings, raw_channel):
    count = 1000
    sent = {}
    for n in range(count):
        event = events.new_event(n + 1, "progress", f"step {n}", seq=n)
        body = json.dumps(event.to_wire()).encode()
        sent[event.event_id] = body
        publish_dead(raw_channel, settings, body, event.event_id, f"job {n + 1} does not exist", "job.progress")
    publish_dead(raw_channel, settings, b"[", "other", "body is not valid JSON: Expecting value", "job.progress")
    assert ready(raw_channel, settings.dead_queue) == count + 1

    replay = subprocess.Popen(
        [sys.executable, "-m", "tracker.cli", "dead", "replay", "--reason", "unknown_job", "-v"],
        env=environment(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert replay.stdout is not None
    # A small pipe: once it is full, the replay waits on us, so it is part-way when killed.
    fcntl.fcntl(replay.stdout.fileno(), F_SETPIPE_SZ, 4096)
    for _ in range(200):
        line = replay.stdout.readline()
        assert line.startswith(b"replayed "), line + replay.stderr.read()
    replay.kill()
    replay.wait(10)

    # The killed connection's unacked messages go back to the dead queue.
    wait_for(
        lambda: ready(raw_channel, settings.dead_queue) + ready(raw_channel, settings.queue) >= count + 1,
        what="requeue",
    )
    still_dead = drain(raw_channel, settings.dead_queue)
    delivered = drain(raw_channel, settings.queue)
    assert 200 <= len(delivered) < count, "the replay was not killed part-way"
    dead_ids = {message_id for message_id, _, _ in still_dead}
    delivered_ids = [message_id for message_id, _, _ in delivered]
    assert "other" in dead_ids and "other" not in delivered_ids
    assert dead_ids - {"other"} | set(delivered_ids) == set(sent), "an event was lost"
    # At most the one in flight when it was killed is in both places: the same event twice,
    # which the merge rule absorbs.
    assert len(dead_ids & set(delivered_ids)) <= 1 and len(set(delivered_ids)) == len(delivered_ids)
    for message_id, body, headers in delivered:
        assert body == sent[message_id]
        assert not any(name.startswith("x-tracker-") for name in headers)

    # Put back what was still dead, as it was, and replay again: this time to the end.
    for message_id, body, headers in still_dead:
        reason, key = headers["x-tracker-reason"], headers["x-tracker-routing-key"]
        publish_dead(
            raw_channel, settings, body, message_id, reason.decode() if isinstance(reason, bytes) else reason, key
        )
    left = len(still_dead) - 1
    out = run_tracker(settings, "dead", "replay", "--reason", "unknown_job")
    assert out.startswith(f"replayed {left} (reason unknown_job) of {left + 1} ")
    finished = {message_id for message_id, _, _ in drain(raw_channel, settings.queue)}
    assert finished | set(delivered_ids) == set(sent)
    assert [message_id for message_id, _, _ in drain(raw_channel, settings.dead_queue)] == ["other"]


def test_replay_never_takes_more_than_the_queue_held_at_the_start(settings, raw_channel):
    """A replayed event that dies again at once must not be picked up again by the same run."""
    for n in range(20):
        publish_dead(raw_channel, settings, b"{}", f"dies-again-{n}", f"job {n + 1} does not exist", "job.progress")
    stop = threading.Event()
    refusing = threading.Thread(target=refuse_everything, args=(settings, stop))
    refusing.start()
    try:
        out = run_tracker(settings, "dead", "replay")
        assert out.startswith("replayed 20 (any reason) of 20 "), out
    finally:
        stop.set()
        refusing.join(10)
    wait_for(lambda: ready(raw_channel, settings.dead_queue) == 20, what="the second deaths")
    # Dead-lettered again, by RabbitMQ itself this time, and so with RabbitMQ's reason.
    assert "broker_rejected: (dead-lettered by RabbitMQ: rejected)" in run_tracker(
        settings, "dead", "show", "--limit", "1"
    )


def refuse_everything(settings: Settings, stop: threading.Event) -> None:
    """A consumer of the events queue that rejects each message, so that RabbitMQ dead-letters it."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = connection.channel()
    channel.basic_consume(settings.queue, lambda ch, method, _p, _b: ch.basic_reject(method.delivery_tag, False))
    while not stop.is_set():
        connection.process_data_events(0.05)
    connection.close()


def test_a_replay_the_broker_cannot_route_removes_nothing(settings, raw_channel):
    publish_dead(raw_channel, settings, b"{}", "routable", "job 1 does not exist", "job.progress")
    publish_dead(raw_channel, settings, b"{}", "nowhere", "job 2 does not exist", "not.a.job")
    publish_dead(raw_channel, settings, b"{}", "after", "job 3 does not exist", "job.progress")
    done = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "dead", "replay"],
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"tracker: exchange {settings.exchange!r} routes 'not.a.job' to no queue; nothing more replayed"
        " (replayed 1 before that)\n"
    )
    assert [message_id for message_id, _, _ in drain(raw_channel, settings.queue)] == ["routable"]
    assert sorted(message_id for message_id, _, _ in drain(raw_channel, settings.dead_queue)) == ["after", "nowhere"]
