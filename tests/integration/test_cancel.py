"""Cancelling jobs (SPEC §12) through the API in process, over real SQLite and PostgreSQL and RabbitMQ:
the answers, the recorded request, what workers are told, and the grace."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import orjson
import pika
import prometheus_client
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from consumers.status import Delivery, StatusProjector
from tests.integration.test_api import Api, assert_alert
from tests.spec_texts import (
    ALREADY_FINISHED,
    CANCEL_GRACE_MESSAGE,
    CANCEL_REQUESTED,
    CANCELLED_BY,
    ID_NOT_INTEGER,
    MISSING_CANCEL,
    NOT_FOUND,
)
from tests.unit.test_openapi import validator
from tracker import broker, events, leases, listing, metrics, timefmt
from tracker.config import Settings
from tracker.store.cancels import CancelRequests
from tracker.store.leases import LostJobs


@pytest.fixture
def control(settings: Settings) -> Iterator[tuple[BlockingChannel, str]]:
    """A queue of the test's own bound to every cancel message, as a worker in any language binds one."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = connection.channel()
    broker.declare_control_exchange(channel, settings)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, settings.control_exchange, routing_key="cancel.#")
    yield channel, queue
    connection.close()


def heard(control: tuple[BlockingChannel, str], count: int, timeout_s: float = 5.0) -> list[dict[str, object]]:
    channel, queue = control
    bodies: list[dict[str, object]] = []
    for method, _properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=timeout_s):
        if method is None:
            break
        assert method.routing_key == f"cancel.{json.loads(body)['job_id']}"
        bodies.append(json.loads(body))
        if len(bodies) == count:
            break
    channel.cancel()
    return bodies


def test_cancel_records_the_request_and_tells_the_worker(api: Api, control: tuple[BlockingChannel, str]) -> None:
    job = api.jobs.create_job()
    url = f"/api/5.0/async_status/{job.id}/cancel"
    first = api.client.simulate_post(url, headers=api.bearer("ops"))
    assert first.status_code == 202, first.text
    assert first.json["alerts"] == [{"text": CANCEL_REQUESTED.format(id=job.id), "level": "success"}]
    row = first.json["response"]
    assert (row["id"], row["status"], row["end_time"]) == (job.id, "PENDING", None)
    requested_at = row["cancel_requested_at"]
    assert validator("CancelRequested").is_valid(first.json)
    assert api.client.simulate_get(f"/api/5.0/async_status/{job.id}", headers=api.bearer("ops")).json == {
        "response": row
    }
    # Asking again is harmless: 202, the first time stays, and no second event.
    again = api.client.simulate_post(url, headers=api.bearer("admin"), json={"message": "really"})
    assert again.status_code == 202
    assert again.json["response"]["cancel_requested_at"] == requested_at
    timeline = api.client.simulate_get(f"/api/5.0/async_status/{job.id}/events", headers=api.bearer("ops")).json
    assert [(e["type"], e["occurred_at"], e["message"]) for e in timeline["response"]] == [
        ("cancel_requested", requested_at, CANCELLED_BY.format(user="ops"))
    ]
    told = heard(control, 2)
    expected = {
        "type": "cancel",
        "job_id": job.id,
        "requested_at": requested_at,
        "message": "Cancellation requested by ops.",
    }
    assert told == [expected, expected]


def test_cancel_answers_as_the_spec_says(api: Api) -> None:
    job = api.jobs.create_job()
    ops = api.bearer("ops")
    custom = api.client.simulate_post(
        f"/api/5.0/async_status/{job.id}/cancel", headers=ops, json={"message": "stop it"}
    )
    assert custom.status_code == 202
    assert api.jobs.timeline(job.id)[0].message == "stop it"
    for status in ("succeeded", "failed"):
        done = api.jobs.create_job()
        api.jobs.apply([events.new_event(done.id, status, None)])
        assert_alert(
            api.client.simulate_post(f"/api/4.0/async_status/{done.id}/cancel", headers=ops),
            409,
            ALREADY_FINISHED.format(id=done.id, status=status.upper()),
        )
        assert api.jobs.get_job(done.id).cancel_requested_at is None
    assert_alert(api.client.simulate_post("/api/5.0/async_status/999999/cancel", headers=ops), 404, NOT_FOUND)
    assert_alert(api.client.simulate_post("/api/5.0/async_status/0/cancel", headers=ops), 404, NOT_FOUND)
    assert_alert(api.client.simulate_post("/api/5.0/async_status/x1/cancel", headers=ops), 400, ID_NOT_INTEGER)
    pending = api.jobs.create_job()
    assert_alert(
        api.client.simulate_post(f"/api/5.0/async_status/{pending.id}/cancel", headers=api.bearer("viewer")),
        403,
        MISSING_CANCEL,
    )
    too_long = api.client.simulate_post(
        f"/api/5.0/async_status/{pending.id}/cancel", headers=ops, json={"message": "x" * 4097}
    )
    assert too_long.status_code == 400
    assert api.jobs.get_job(pending.id).cancel_requested_at is None


def test_cancel_many_by_the_lists_filters(api: Api, control: tuple[BlockingChannel, str]) -> None:
    ops = api.bearer("ops")
    jobs = [api.jobs.create_job(kind="export" if n >= 2 else "import") for n in range(6)]
    api.jobs.apply([events.new_event(jobs[4].id, "succeeded", None)])
    url = "/api/5.0/async_status/cancel"
    for query in ("", "status=PENDING", "status=PENDING&limit=5&orderby=id", f"idAbove={jobs[1].id}"):
        assert_alert(
            api.client.simulate_post(url, headers=ops, query_string=query),
            400,
            "cancelling jobs needs at least one of the list's filters besides status",
        )
    assert_alert(
        api.client.simulate_post(url, headers=ops, query_string="kind=a%20b"),
        400,
        "kind parameter must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
    )
    assert api.client.simulate_get(url, headers=ops).status_code == 405
    assert_alert(
        api.client.simulate_post(url, headers=api.bearer("viewer"), query_string="kind=export"), 403, MISSING_CANCEL
    )
    answer = api.client.simulate_post(url, headers=ops, query_string="kind=export")
    assert (answer.status_code, answer.json) == (202, {"response": {"requested": 3}})
    assert validator("CancelsRequested").is_valid(answer.json)
    assert [api.jobs.get_job(j.id).cancel_requested_at is not None for j in jobs] == [
        False,
        False,
        True,
        True,
        False,
        True,
    ]
    assert {body["job_id"] for body in heard(control, 3)} == {jobs[2].id, jobs[3].id, jobs[5].id}
    # Again: the same jobs, their first request kept, no new event; FAILED only: none.
    again = api.client.simulate_post(url, headers=ops, query_string="kind=export&status=PENDING")
    assert again.json == {"response": {"requested": 3}}
    assert [e.type for e in api.jobs.timeline(jobs[2].id)] == ["cancel_requested"]
    none = api.client.simulate_post(url, headers=ops, query_string="kind=export&status=FAILED")
    assert none.json == {"response": {"requested": 0}}


def test_cancel_many_stops_at_its_most(api: Api) -> None:
    jobs = [api.jobs.create_job() for _ in range(5)]
    requests = CancelRequests(api.jobs)
    told = requests.request_many(listing.parse_filter({"startedBefore": "0s"}), "stop", timefmt.now(), most=3)
    assert [notice.job_id for notice in told] == [job.id for job in jobs[:3]]


def test_a_job_still_pending_after_the_grace_is_failed_by_the_tracker(api: Api) -> None:
    quick, slow, done = (api.jobs.create_job() for _ in range(3))
    past = timefmt.now() - dt.timedelta(seconds=120)
    api.jobs.apply([events.new_event(job.id, "cancel_requested", None, occurred_at=past) for job in (slow, done)])
    api.jobs.apply([events.new_event(quick.id, "cancel_requested", None)])
    api.jobs.apply([events.new_event(done.id, "failed", "stopped", error_code="cancelled")])
    checked = LostJobs(api.jobs.engine, 86400, cancel_grace_s=60).check(lambda: True)
    assert checked is not None
    assert [(lost.job_id, lost.reason, lost.message) for lost in checked.new] == [
        (slow.id, "cancelled", CANCEL_GRACE_MESSAGE.format(n=60))
    ]
    event = checked.new[0].failed_event()
    assert (event.type, event.error_code) == ("failed", "cancelled")
    assert event.event_id == checked.new[0].failed_event().event_id  # derived from the job and the reason
    api.jobs.apply([event])
    row = api.client.simulate_get(f"/api/5.0/async_status/{slow.id}", headers=api.bearer("ops")).json["response"]
    assert (row["status"], row["message"], row["error"]) == (
        "FAILED",
        CANCEL_GRACE_MESSAGE.format(n=60),
        {"code": "cancelled"},
    )


def test_one_consumer_at_a_time_repeats_the_cancel_messages(api: Api) -> None:
    job = api.jobs.create_job()
    requests = CancelRequests(api.jobs)
    requests.request(job.id, "stop", timefmt.now())
    inner: list[int | None] = []

    def tell(notices: list[object]) -> None:
        inner.append(CancelRequests(api.jobs).pending_notices(lambda _: None, most=10))

    assert requests.pending_notices(tell, most=10) == 1
    if api.jobs.engine.dialect.name == "postgresql":
        assert inner == [None]  # the other was told to leave it
    api.jobs.apply([events.new_event(job.id, "succeeded", None)])
    assert requests.pending_notices(tell, most=10) == 0


def test_the_consumer_counts_who_ended_each_cancelled_job(api: Api) -> None:
    """tracker_jobs_cancelled_total{by}: once per job ended by a cancellation, however often its event comes."""
    by_worker, by_tracker, other = (api.jobs.create_job() for _ in range(3))
    counted: list[str] = []
    projector = StatusProjector(api.jobs, on_cancelled=counted.append)
    batch = [
        events.new_event(by_worker.id, "failed", "stopped", error_code="cancelled"),
        leases.Lost(by_tracker.id, "cancelled", 60, timefmt.now()).failed_event(),
        events.new_event(other.id, "failed", "disk full", error_code="disk_full"),
    ]
    deliveries = [Delivery(n, orjson.dumps(event.to_wire())) for n, event in enumerate(batch)]
    assert projector.handle(deliveries).applied == 3
    assert sorted(counted) == ["tracker", "worker"]
    projector.handle(deliveries)  # delivered again: the jobs ended already
    assert sorted(counted) == ["tracker", "worker"]
    before = metric_value("tracker_jobs_cancelled_total", by="worker")
    metrics.count_cancelled_job("worker")
    assert metric_value("tracker_jobs_cancelled_total", by="worker") == before + 1
    with pytest.raises(ValueError, match="by must be one of worker, tracker"):
        metrics.count_cancelled_job("someone")


def metric_value(name: str, **labels: str) -> float:
    value = prometheus_client.REGISTRY.get_sample_value(name, labels)
    return value or 0.0
