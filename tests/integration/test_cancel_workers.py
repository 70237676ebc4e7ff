"""The worker library hearing cancellations (SPEC §12) against real RabbitMQ, SQLite and PostgreSQL:
across a lost broker connection, and many workers at once, each hearing its own job only."""

from __future__ import annotations

import threading
import time

import pika
import pytest

from tests.faults.proxy import TcpProxy
from tests.integration.test_api import Api
from tests.polling import poll_until
from tracker import broker, events, merge, timefmt
from tracker.publisher import Publisher
from tracker.store.cancels import CancelRequests

pytestmark = [pytest.mark.rabbitmq]


def events_of(settings, count: int, timeout_s: float = 10.0) -> list[events.Event]:
    """``count`` events taken from the events queue (the test's own), as a consumer would."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = connection.channel()
    taken: list[events.Event] = []
    for method, properties, body in channel.consume(settings.queue, inactivity_timeout=timeout_s):
        if method is None:
            break
        channel.basic_ack(method.delivery_tag)
        taken.append(events.parse(body, properties.content_type))
        if len(taken) == count:
            break
    connection.close()
    return taken


def test_a_block_hears_its_cancel_across_a_lost_broker_connection(api: Api, settings) -> None:
    job = api.jobs.create_job()
    requests = CancelRequests(api.jobs)
    control = broker.ControlPublisher(settings)
    with TcpProxy(("127.0.0.1", 5672)) as proxy:
        through_proxy = settings.with_(amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F")
        with Publisher(through_proxy) as publisher:
            with publisher.job(job.id) as report:
                listener = publisher.cancel_listener()
                assert listener.listening() == {job.id}
                proxy.cut()  # the listener's queue goes with its connection
                _, notice = requests.request(job.id, "while you were away", timefmt.now())
                control.tell([notice])  # told once, to nobody: lost
                time.sleep(0.5)
                assert not report.cancelled.is_set()
                proxy.restore()
                # The consumers' repeat (every reap interval while the job is PENDING) reaches the new queue.
                deadline = time.monotonic() + 15
                while not report.cancelled.wait(0.2):
                    assert time.monotonic() < deadline, "never heard after the reconnect"
                    requests.pending_notices(control.tell, most=100)
                assert listener.sessions >= 2
                report.check_cancelled()
            # The block's end unbinds its job (soon, on the listener's thread).
            poll_until(lambda: listener.listening() == frozenset(), 5, "the job unbound")
    control.close()
    (failed,) = events_of(settings, 1)
    assert (failed.job_id, failed.type, failed.message, failed.error_code) == (
        job.id,
        "failed",
        "while you were away",
        "cancelled",
    )
    api.jobs.apply([failed])
    row = api.jobs.get_job(job.id)
    assert (row.status, row.error_code, row.cancel_requested_at) == (merge.FAILED, "cancelled", notice.requested_at)


def test_a_thousand_jobs_cancelled_at_once_with_two_hundred_workers_listening(api: Api, settings) -> None:
    """200 job blocks, as threads of one process over 4 Publishers (so 4 listener connections), on 200 of
    1,000 jobs; one bulk request cancels all 1,000. Each block hears its own job, and nothing else
    reaches a listener: its queue is bound to its blocks' jobs only."""
    jobs = [api.jobs.create_job(kind="bulk.test").id for _ in range(1000)]
    watched = jobs[::5]
    publishers = [Publisher(settings) for _ in range(4)]
    listening = threading.Barrier(len(watched) + 1)
    heard: dict[int, int | None] = {}
    ended: list[int] = []
    lock = threading.Lock()

    def work(n: int, job_id: int) -> None:
        with publishers[n % 4].job(job_id) as report:
            listening.wait(60)
            report.cancelled.wait(60)
            with lock:
                heard[job_id] = report.cancel_notice.job_id if report.cancel_notice else None
            report.check_cancelled()
        with lock:
            ended.append(job_id)  # reached only if the block swallowed JobCancelled

    threads = [threading.Thread(target=work, args=(n, job_id)) for n, job_id in enumerate(watched)]
    for thread in threads:
        thread.start()
    listening.wait(60)
    started = time.monotonic()
    answer = api.client.simulate_post(
        "/api/5.0/async_status/cancel", headers=api.bearer("ops"), query_string="kind=bulk.test"
    )
    assert (answer.status_code, answer.json) == (202, {"response": {"requested": 1000}})
    for thread in threads:
        thread.join(60)
    took = time.monotonic() - started
    assert heard == {job_id: job_id for job_id in watched}
    assert sorted(ended) == sorted(watched)
    listeners = [publisher.cancel_listener() for publisher in publishers]
    assert sum(listener.heard for listener in listeners) == len(watched)
    assert [listener.sessions for listener in listeners] == [1, 1, 1, 1]
    for publisher in publishers:
        publisher.close()
    failures = events_of(settings, len(watched))
    assert sorted(e.job_id for e in failures) == sorted(watched)
    assert {(e.type, e.error_code) for e in failures} == {("failed", "cancelled")}
    print(f"1,000 cancelled, 200 blocks heard and ended in {took:.2f} s")
