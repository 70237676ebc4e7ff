"""Bad input on the queue, against a real `tracker consume`: each kind is dead-lettered with its own
reason, the good events around it still apply, and `tracker dead` shows an operator the count."""

from __future__ import annotations

import collections
import dataclasses
import json
import random
import time
import uuid
from collections.abc import Iterator

import pika
import pytest
import sqlalchemy as sa

from bench.processes import environment
from tests.faults.stream import Record, conclude, create_jobs, plan_events
from tests.processes import ConsumerProcess, run_tracker
from tracker import events
from tracker.broker import routing_key
from tracker.store import open_job_store

pytestmark = [pytest.mark.rabbitmq]

NO_SUCH_JOB = 9_000_000_000_000_000_000  # a valid id that no test database reaches
FRAME_MAX = 131072  # RabbitMQ's default frame size: a message's properties must fit in one frame


@dataclasses.dataclass(frozen=True)
class BadInput:
    kind: str
    body: bytes
    reason: str  # a part of x-tracker-reason that says specifically what is wrong
    content_type: str | None = events.CONTENT_TYPE
    headers: dict[str, object] | None = None


def corpus(job_id: int) -> list[BadInput]:
    """Bad messages about an existing job, each breaking SPEC §3 in exactly one way."""
    valid = events.new_event(job_id, "progress", "valid", seq=1).to_wire()
    text = json.dumps(valid)
    long_key = "k" * 32000

    def changed(**fields: object) -> bytes:
        return json.dumps({**valid, **fields}).encode()

    def without(name: str) -> bytes:
        return json.dumps({k: v for k, v in valid.items() if k != name}).encode()

    return [
        BadInput("truncated JSON", text.encode()[:-12], "body is not valid JSON"),
        BadInput("empty body", b"", "body is not valid JSON"),
        BadInput(
            "invalid UTF-8",
            text.replace('"valid"', '"\udcff"').encode("utf-8", "surrogateescape"),
            "body is not valid UTF-8",
        ),
        BadInput("JSON array", json.dumps([valid]).encode(), "must be a JSON object, not an array"),
        BadInput("JSON string", b'"progress"', "must be a JSON object, not a string"),
        BadInput("JSON null", b"null", "must be a JSON object, not null"),
        BadInput("job_id as a string", changed(job_id=str(job_id)), "job_id: must be an integer"),
        BadInput("job_id as a boolean", changed(job_id=True), "job_id: must be an integer"),
        BadInput("job_id as a float", changed(job_id=float(job_id)), "job_id: must be an integer"),
        BadInput("job_id zero", changed(job_id=0), "job_id: must be at least 1"),
        BadInput("negative job_id", changed(job_id=-job_id), "job_id: must be at least 1"),
        BadInput("job_id over 2^63-1", changed(job_id=2**63), "job_id: must be at most 9223372036854775807"),
        BadInput(
            "job that does not exist",
            changed(job_id=NO_SUCH_JOB),
            f"job {NO_SUCH_JOB} does not exist",
            headers={"trace-id": "kept on the dead letter"},
        ),
        BadInput("missing event_id", without("event_id"), "event_id: is required"),
        BadInput("missing job_id", without("job_id"), "job_id: is required"),
        BadInput("missing type", without("type"), "type: is required"),
        BadInput("missing occurred_at", without("occurred_at"), "occurred_at: is required"),
        BadInput("event_id not a UUID", changed(event_id="42"), "event_id: must be a UUID"),
        BadInput(
            "unknown type", changed(type="paused"), "type: must be one of progress, succeeded, failed, cancel_requested"
        ),
        BadInput(
            "timestamp without offset",
            changed(occurred_at="2026-01-01T12:00:00.123456"),
            "occurred_at: must be an RFC 3339 timestamp with an offset",
        ),
        BadInput("timestamp as a number", changed(occurred_at=1767268800), "occurred_at: must be an RFC 3339"),
        BadInput(
            "impossible date", changed(occurred_at="2026-02-30T12:00:00Z"), "occurred_at: is not a valid date and time"
        ),
        BadInput("NaN", text.replace('"seq": 1', '"seq": NaN').encode(), "body holds NaN, which is not JSON"),
        BadInput("Infinity", text.replace('"seq": 1', '"seq": -Infinity').encode(), "body holds -Infinity"),
        BadInput("negative seq", changed(seq=-1), "seq: must be at least 0"),
        BadInput(
            "message of 4097 characters",
            changed(message="m" * 4097),
            "message: must be at most 4096 characters, not 4097",
        ),
        BadInput("message not a string", changed(message=["a"]), "message: must be a string or null"),
        BadInput("message with NUL", changed(message="a\x00b"), "message: must not contain NUL"),
        BadInput(
            "message with a lone surrogate",
            text.replace('"valid"', '"\\ud800"').encode(),
            "message: must be valid Unicode",
        ),
        BadInput("repeated key", text.replace("{", '{"type": "failed", ', 1).encode(), "body repeats the key 'type'"),
        # SPEC §11's fields
        BadInput("progress over 100", changed(progress=100.5), "progress: must be a number from 0 to 100"),
        BadInput("progress as a string", changed(progress="50"), "progress: must be a number from 0 to 100"),
        BadInput("result on a progress event", changed(result={"rows": 1}), "result: only a succeeded event"),
        BadInput(
            "result over 16 KiB",
            changed(type="succeeded", result="r" * 16383),
            "result: must be at most 16384 bytes as compact JSON, not 16385",
        ),
        BadInput(
            "integer beyond 64 bits in a result",
            changed(type="succeeded", result=[2**64]),
            "result: cannot be kept as JSON",
        ),
        BadInput("error on a succeeded event", changed(type="succeeded", error={"code": "x"}), "error: only a failed"),
        BadInput("error not an object", changed(type="failed", error="disk full"), "error: must be an object"),
        BadInput(
            "error code in capitals", changed(type="failed", error={"code": "LOST"}), "error: code must be 1 to 64"
        ),
        BadInput(
            "error details over 16 KiB",
            changed(type="failed", error={"code": "x", "details": ["d" * 16381]}),
            "error: details must be at most 16384 bytes as compact JSON, not 16385",
        ),
        BadInput(
            "repeated key in a result",
            text.replace("{", '{"result": {"a": 1, "a": 2}, ', 1).encode(),
            "body repeats the key 'a'",
        ),
        BadInput(
            "number beyond a double", text.replace('"seq": 1', '"seq": 1e400').encode(), "body holds the number 1e400"
        ),
        BadInput("nested too deeply", b"[" * 30000 + b"]" * 30000, "nested too deeply"),
        BadInput("65 KiB body", changed(message=None, padding="p" * (65 * 1024)), "over the limit of 65536"),
        BadInput(
            "wrong content type",
            text.encode(),
            "content_type must be application/json, not 'text/plain'",
            content_type="text/plain",
        ),
        BadInput(
            "no content type", text.encode(), "content_type must be application/json, not None", content_type=None
        ),
        # Dead-lettering adds headers: with these the copy would outgrow the broker's frame size.
        BadInput(
            "headers near the frame limit",
            b"{not json",
            "body is not valid JSON",
            headers={"padding": "h" * (FRAME_MAX - 200)},
        ),
        BadInput(
            "a 32000-character key, repeated",
            f'{{"{long_key}": 1, "{long_key}": 2}}'.encode(),
            "body repeats the key 'kkkk",
            headers={"padding": "h" * 100_000},
        ),
    ]


@pytest.fixture
def consumer(settings, tmp_path) -> Iterator[ConsumerProcess]:
    process = ConsumerProcess(environment(settings), tmp_path / "consumer.log").start()
    process.wait_ready()
    yield process
    if process.alive:
        process.kill()


def publish(
    raw_channel,
    settings,
    body: bytes,
    content_type: str | None,
    message_id: str,
    headers: dict[str, object] | None = None,
) -> None:
    properties = pika.BasicProperties(
        content_type=content_type, delivery_mode=2, message_id=message_id, headers=headers
    )
    raw_channel.basic_publish(settings.exchange, routing_key("progress"), body, properties, mandatory=True)


def drain(raw_channel, queue: str) -> dict[str, tuple[bytes, dict]]:
    """Take every message out of ``queue``: message_id -> (body, headers)."""
    taken = {}
    while True:
        method, properties, body = raw_channel.basic_get(queue, auto_ack=True)
        if method is None:
            return taken
        taken[properties.message_id] = (body, properties.headers or {})


def test_bad_messages_are_dead_lettered_with_their_reason_and_good_ones_apply(settings, engine, consumer, raw_channel):
    rng = random.Random(3)
    store = open_job_store(engine)
    job_ids = create_jobs(store, 10, rng)
    bad = corpus(job_ids[0])
    assert len({b.kind for b in bad}) >= 15
    good = plan_events(job_ids, 3 * len(bad), rng)
    record = Record()
    started = time.monotonic()
    for n, item in enumerate(bad):
        # Each bad message between good ones, in the same batches as they are.
        for event in good[3 * n : 3 * n + 3]:
            record.sending()
            publish(raw_channel, settings, json.dumps(event.to_wire()).encode(), events.CONTENT_TYPE, event.event_id)
            record.confirm(event)
        record.sending()
        publish(raw_channel, settings, item.body, item.content_type, f"bad {n}: {item.kind}", item.headers)

    database = sa.make_url(settings.database_url).get_backend_name()
    conclude(
        scenario=f"5. bad input ({database})",
        done=f"{len(bad)} kinds of bad message, each between good events, to a running consumer",
        checked="each bad one dead-lettered with its own x-tracker-reason and body; every good one "
        "applied; consumer never stalls or exits; `tracker dead` counts them",
        settings=settings,
        engine=engine,
        job_ids=job_ids,
        record=record,
        consumers=[consumer],
        started=started,
        expected_dead=len(bad),
        timeout=60,
        database=database,
    )

    shown = run_tracker(settings, "dead")
    assert shown.splitlines()[0] == f"{settings.dead_queue}: {len(bad)} dead-lettered messages"
    dead = drain(raw_channel, settings.dead_queue)
    assert len(dead) == len(bad), "looking at the dead letters took some away"
    for n, item in enumerate(bad):
        body, headers = dead[f"bad {n}: {item.kind}"]
        assert body == item.body, item.kind
        assert item.reason in headers["x-tracker-reason"], (item.kind, headers["x-tracker-reason"])
        assert headers["x-tracker-routing-key"] == routing_key("progress")
        assert len(headers["x-tracker-reason"]) <= 1000, "a reason quoting the input is cut short"
        if item.headers and "padding" in item.headers:
            assert "padding" not in headers and "x-tracker-headers-dropped" in headers, item.kind
        elif item.headers:
            assert item.headers.items() <= headers.items(), "small original headers are kept"
        assert headers["x-tracker-reason"] in shown, "tracker dead does not show this reason"


def test_tracker_dead_counts_by_reason_and_leaves_the_messages_queued(settings, raw_channel):
    reasons = ["job 7 does not exist"] * 3 + ["type: is required"] * 2 + ["body is not valid JSON: x"]
    for reason in reasons:
        raw_channel.basic_publish(
            settings.dead_exchange,
            "job.progress",
            b"{}",
            pika.BasicProperties(headers={"x-tracker-reason": reason}, message_id=str(uuid.uuid4())),
        )
    raw_channel.basic_publish(settings.dead_exchange, "job.progress", b"{}", pika.BasicProperties())

    shown = run_tracker(settings, "dead").splitlines()
    assert shown[0] == f"{settings.dead_queue}: 7 dead-lettered messages"
    assert shown[1] == "reasons (all):"
    # count, the reason's short code (what `tracker dead replay --reason` takes), the reason
    counted = collections.Counter({(line[10:31].strip(), line[33:]): int(line[:8]) for line in shown[2:]})
    assert counted == {
        ("unknown_job", "job 7 does not exist"): 3,
        ("invalid_field", "type: is required"): 2,
        ("invalid_json", "body is not valid JSON: x"): 1,
        ("no_reason", "(no x-tracker-reason header)"): 1,
    }
    assert shown[2].endswith("job 7 does not exist"), "most frequent first"

    limited = run_tracker(settings, "dead", "--limit", "2").splitlines()
    assert limited[:3] == [
        f"{settings.dead_queue}: 7 dead-lettered messages",
        "reasons (the first 2):",
        "       2  unknown_job            job 7 does not exist",
    ]
    assert len(drain(raw_channel, settings.dead_queue)) == 7, "looking took messages away"
    assert run_tracker(settings, "dead").splitlines() == [f"{settings.dead_queue}: 0 dead-lettered messages"]
