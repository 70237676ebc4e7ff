"""Webhooks through the whole system: `tracker api` takes the notify_url, `tracker consume` ends the
job and delivers it, and a consumer killed mid-delivery has it delivered later, same webhook-id."""

from __future__ import annotations

import json
import time

import pytest

from bench.processes import environment
from tests.e2e.live_api import add_users, running_api
from tests.processes import ConsumerProcess
from tests.receivers import ACCEPT, HANG, Receiver
from tracker import webhooks
from tracker.events import new_event
from tracker.publisher import Publisher

pytestmark = [pytest.mark.rabbitmq]

SECRET = "whsec_" + "dGhlIGUyZSByZWNlaXZlcnMnIHNoYXJlZCBzZWNyZXQ="


def test_a_consumer_killed_mid_delivery_has_it_delivered_later_with_the_same_webhook_id(settings, tmp_path):
    add_users(settings.database_url, ops="operations")
    with Receiver(HANG, ACCEPT) as receiver:
        # The consumers look for due deliveries on their own only every 30 s: the first attempt must
        # come from the fold's wake-up, the second from the lapse of the killed one's claim.
        configured = settings.with_(webhook_allow=receiver.origin, webhook_secret=SECRET, reap_interval_s=30.0)
        consumer = ConsumerProcess(environment(configured), tmp_path / "consumer.log").start()
        try:
            consumer.wait_ready()
            api_settings = {"amqp_url": settings.amqp_url, "webhook_allow": receiver.origin, "webhook_secret": SECRET}
            with running_api(settings.database_url, tmp_path, **api_settings) as api:
                token = api.login("ops")
                headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                body = json.dumps({"message": "Deploying.", "notify_url": receiver.url()}).encode()
                created = api.request("POST", "/api/5.0/async_status", body, headers)
                assert created.status == 202, created
                job = created.json["response"]
                assert job["notify"] == {"url": receiver.url(), "state": "pending", "attempts": 0}

                with Publisher(configured) as publisher:
                    publisher.publish(new_event(job["id"], "succeeded", "Deployed."))
                    published = time.monotonic()
                [first] = receiver.wait_for(1, timeout=10)
                assert first.at - published < 2.0  # woken by its own fold, not by its 30 s look
                consumer.kill()  # SIGKILL, while the receiver holds the request
                consumer.start()
                consumer.wait_ready()
                # Taken over once the dead one's claim lapses: 10 s for its attempt, 5 s to record it.
                first, second = receiver.wait_for(2, timeout=40)
                assert 14 < second.at - first.at < 25, second.at - first.at

                answer = api.request("GET", f"/api/5.0/async_status/{job['id']}", headers=headers).json["response"]
        finally:
            consumer.stop()
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    sent = [post.verified(SECRET) for post in (first, second)]
    assert [each["job"]["notify"]["attempts"] for each in sent] == [1, 2]
    assert sent[1] == {"type": "job.finished", "job": {**answer, "notify": {**answer["notify"], "state": "pending"}}}
    assert answer["status"] == "SUCCEEDED"
    assert answer["notify"] == {"url": receiver.url(), "state": webhooks.DELIVERED, "attempts": 2}
