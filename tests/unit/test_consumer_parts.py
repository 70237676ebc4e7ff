"""The consumer loop's small parts without a broker: which errors are fatal, the dead-letter
publish, the health file and the signals."""

from __future__ import annotations

import logging
import signal
from typing import Any

import pika
import pika.exceptions
import pytest

from consumers.amqp import ConsumerCancelled, HealthFile, dead_letter, refusal, stop_on_signals
from consumers.status import DeadLetter, Delivery
from tracker import broker
from tracker.errors import BrokerUnreachable


@pytest.mark.parametrize(
    ("exc", "fatal"),
    [
        (pika.exceptions.ProbableAuthenticationError("ACCESS_REFUSED"), "RabbitMQ refused the credentials: "),
        (pika.exceptions.ProbableAccessDeniedError("no vhost"), "RabbitMQ refused access to the virtual host: "),
        (pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - x"), "RabbitMQ refused the topology: "),
        (pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED - y"), "RabbitMQ refused the topology: "),
        (pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no queue"), None),
        (pika.exceptions.StreamLostError("reset"), None),
        (pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED"), None),
        (BrokerUnreachable("no node answered"), None),
        (pika.exceptions.UnroutableError([]), None),
        (ConsumerCancelled("cancelled"), None),
    ],
)
def test_only_refused_credentials_vhost_or_topology_are_fatal(exc: Exception, fatal: str | None) -> None:
    said = refusal(exc)
    if fatal is None:
        assert said is None
    else:
        assert said is not None and said.startswith(fatal)


class RecordingChannel:
    def __init__(self, refuse: Exception | None = None) -> None:
        self.published: list[tuple[Any, ...]] = []
        self.refuse = refuse

    def basic_publish(self, exchange: str, routing_key: str, body: bytes, properties: Any, mandatory: bool) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.published.append((exchange, routing_key, body, properties, mandatory))


def test_a_dead_letter_goes_to_the_dead_exchange_mandatory_with_its_reason_and_own_properties(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivery = Delivery(
        tag=17,
        body=b"{not json",
        content_type="text/plain",
        routing_key="job.progress",
        headers={"trace": "t1"},
        message_id="8ed3",
    )
    channel = RecordingChannel()
    dead_letter(channel, "async_status.dlx", DeadLetter(delivery, "body is not valid JSON: x"))
    [(exchange, key, body, properties, mandatory)] = channel.published
    assert (exchange, key, body, mandatory) == ("async_status.dlx", "job.progress", b"{not json", True)
    assert (properties.delivery_mode, properties.message_id, properties.content_type) == (2, "8ed3", "text/plain")
    assert properties.headers == {
        "trace": "t1",
        broker.REASON_HEADER: "body is not valid JSON: x",
        broker.ROUTING_KEY_HEADER: "job.progress",
    }
    [record] = [r for r in caplog.records if r.name == "consumers.amqp"]
    assert record.getMessage() == "dead-lettered delivery 17 (message_id 8ed3): body is not valid JSON: x"
    assert (record.levelno, record.reason_code, record.event_id) == (logging.WARNING, "invalid_json", "8ed3")


def test_a_dead_letter_the_broker_does_not_take_raises_and_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    channel = RecordingChannel(refuse=pika.exceptions.UnroutableError([]))
    with pytest.raises(pika.exceptions.UnroutableError):
        dead_letter(channel, "dlx", DeadLetter(Delivery(tag=1, body=b"x"), "job 5 does not exist"))
    assert not [r for r in caplog.records if r.name == "consumers.amqp"]


def test_the_health_file_is_touched_at_once_then_at_most_every_few_seconds(tmp_path) -> None:
    now = [100.0]
    path = tmp_path / "alive"
    health = HealthFile(str(path), every_s=5.0, clock=lambda: now[0])
    health.beat()
    assert path.exists()
    path.unlink()
    now[0] += 4.9
    health.beat()
    assert not path.exists(), "touched again before every_s"
    now[0] += 0.1
    health.beat()
    assert path.exists()


def test_no_health_file_no_touching(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    HealthFile(None).beat()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_ask_to_stop(signum: signal.Signals) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stopped: list[bool] = []
    try:
        stop_on_signals(lambda: stopped.append(True))
        signal.raise_signal(signum)
        assert stopped == [True]
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
