"""tracker.broker without a broker: the channel it keeps, the queue count, an older classic dead
queue told apart, message properties and dead-letter headers, the reconnect delay."""

from __future__ import annotations

from typing import Any

import orjson
import pika
import pika.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker import broker, events
from tracker.config import Settings
from tracker.errors import BrokerUnreachable


class FakeChannel:
    def __init__(self, connection: FakeConnection, ready: int = 0, refusal: Exception | None = None) -> None:
        self.connection = connection
        self.closed = False
        self.confirming = False
        self.ready = ready
        self.refusal = refusal

    @property
    def is_open(self) -> bool:
        return not self.closed and self.connection.is_open  # as pika's: closed with its connection

    def confirm_delivery(self) -> None:
        self.confirming = True

    def queue_declare(self, queue: str, passive: bool = False) -> Any:
        assert passive
        if self.refusal is not None:
            self.closed = True
            raise self.refusal
        return pika.frame.Method(1, pika.spec.Queue.DeclareOk(queue, message_count=self.ready))


class FakeConnection:
    def __init__(self) -> None:
        self.is_open = True
        self.channels: list[FakeChannel] = []

    def channel(self) -> FakeChannel:
        self.channels.append(FakeChannel(self))
        return self.channels[-1]

    def close(self) -> None:
        self.is_open = False
        raise pika.exceptions.StreamLostError("closing a connection that is already gone")


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[FakeConnection]:
    """Every connection a Connector makes, in order; and declare_topology records the channel it declared on."""
    made: list[FakeConnection] = []

    def connect(_self: broker.Connector) -> FakeConnection:
        made.append(FakeConnection())
        return made[-1]

    monkeypatch.setattr(broker.Connector, "connect", connect)
    monkeypatch.setattr(broker, "declare_topology", lambda channel, _settings: setattr(channel, "declared", True))
    return made


def test_a_kept_channel_confirms_and_is_reused_while_open(connections: list[FakeConnection]) -> None:
    kept = broker.ConfirmingChannel(Settings(), "test")
    channel = kept.open()
    assert channel.confirming and not hasattr(channel, "declared")
    assert kept.open() is channel
    assert len(connections) == 1


def test_a_closed_channel_is_opened_again_on_the_same_connection_and_a_closed_connection_reconnects(
    connections: list[FakeConnection],
) -> None:
    kept = broker.ConfirmingChannel(Settings(), "test", declare=True)
    first = kept.open()
    assert first.declared
    first.closed = True  # as after a 404
    second = kept.open()
    assert second is not first and second.connection is first.connection and second.confirming and second.declared
    second.connection.is_open = False  # the broker went
    third = kept.open()
    assert third.connection is connections[1] and len(connections) == 2


def test_close_is_quiet_and_the_next_open_connects_again(connections: list[FakeConnection]) -> None:
    kept = broker.ConfirmingChannel(Settings(), "test")
    kept.open()
    kept.close()  # the fake's close raises StreamLostError
    assert not connections[0].is_open
    kept.close()  # twice is harmless
    kept.open()
    assert len(connections) == 2


def test_a_queue_count_is_its_ready_messages_and_none_for_a_queue_never_declared() -> None:
    connection = FakeConnection()
    assert broker.count_messages(FakeChannel(connection, ready=7), "q") == 7
    never = pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no queue 'q' in vhost '/'")
    assert broker.count_messages(FakeChannel(connection, refusal=never), "q") is None


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (404, "NOT_FOUND - home node 'rabbit@n1' of durable queue 'q' in vhost '/' is down or inaccessible"),
        (403, "ACCESS_REFUSED - access to queue 'q' refused"),
    ],
)
def test_a_queue_that_is_there_but_unavailable_or_refused_is_an_error_not_a_count(code: int, text: str) -> None:
    refusal = pika.exceptions.ChannelClosedByBroker(code, text)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        broker.count_messages(FakeChannel(FakeConnection(), refusal=refusal), "q")
    assert broker.home_node_down(refusal) == (code == 404)


def inequivalent(arg: str, received: str, current: str) -> str:
    """RabbitMQ's text when a queue is declared with other arguments than it has."""
    return (
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for queue 'd' in vhost '/': "
        f"received {received} but current is {current}"
    )


QUORUM = "the value 'quorum' of type 'longstr'"


@pytest.mark.parametrize(
    ("code", "text", "classic"),
    [
        (406, inequivalent("x-queue-type", QUORUM, "none"), True),  # as older trackers declared it
        (406, inequivalent("x-queue-type", QUORUM, "the value 'classic' of type 'longstr'"), True),
        (406, inequivalent("x-queue-type", QUORUM, "the value 'stream' of type 'longstr'"), False),
        (406, inequivalent("durable", "'true'", "'false'"), False),
        (406, inequivalent("x-max-length", "none", "the value '10' of type 'signedint'"), False),
        (404, "NOT_FOUND - home node 'rabbit@n1' of durable queue 'd' in vhost '/' is down or inaccessible", False),
    ],
)
def test_only_a_classic_queue_under_the_name_is_still_classic(code: int, text: str, classic: bool) -> None:
    assert broker.still_classic(pika.exceptions.ChannelClosedByBroker(code, text)) == classic


def test_broker_unreachable_is_a_connection_error_to_retry_and_a_broker_error() -> None:
    assert issubclass(BrokerUnreachable, ConnectionError)
    assert issubclass(BrokerUnreachable, broker.CONNECTION_ERRORS) and issubclass(BrokerUnreachable, broker.ERRORS)
    assert issubclass(pika.exceptions.StreamLostError, broker.CONNECTION_ERRORS)
    assert not issubclass(pika.exceptions.ChannelClosedByBroker, broker.CONNECTION_ERRORS)


def test_an_event_is_sent_as_its_wire_json_persistent_with_its_id() -> None:
    event = events.new_event(42, "progress", "half way", seq=3)
    body, properties = broker.event_message(event)
    assert orjson.loads(body) == event.to_wire() and events.parse(body) == event
    assert (properties.content_type, properties.delivery_mode, properties.message_id, properties.headers) == (
        "application/json",
        2,
        event.event_id,
        None,
    )


def test_a_dead_letter_keeps_small_headers_and_adds_its_reason_and_routing_key() -> None:
    headers = broker.dead_letter_headers({"trace": "t1"}, "job.progress", "job 5 does not exist")
    assert headers == {
        "trace": "t1",
        "x-tracker-reason": "job 5 does not exist",
        "x-tracker-routing-key": "job.progress",
    }


def test_a_long_reason_is_cut_and_big_or_unencodable_headers_are_left_out() -> None:
    headers = broker.dead_letter_headers({"padding": "p" * 20_000}, "job.x", "r" * 5000)
    assert headers[broker.REASON_HEADER] == "r" * 999 + "…"
    assert "padding" not in headers
    assert headers[broker.HEADERS_DROPPED_HEADER].endswith(" bytes")
    assert int(headers[broker.HEADERS_DROPPED_HEADER].split()[0]) > broker.MAX_KEPT_HEADER_BYTES
    odd = broker.dead_letter_headers({"when": object()}, "job.x", "r")
    assert odd[broker.HEADERS_DROPPED_HEADER] == "not encodable"


@given(st.dictionaries(st.text(min_size=1, max_size=20).filter(lambda k: not k.startswith("x-")), st.text(max_size=50)))
def test_a_replayed_dead_letter_goes_back_with_exactly_its_own_headers(own: dict[str, str]) -> None:
    died = {**broker.dead_letter_headers(own, "job.progress", "why"), "x-death": [{"count": 1}]}
    # x-delivery-count: what a quorum dead queue says of each delivery it makes
    died.update({"x-first-death-reason": "rejected", "x-last-death-queue": "q", "x-delivery-count": 2})
    assert broker.replay_headers(died) == (own or None)


def test_a_replay_is_persistent_with_its_id_and_type() -> None:
    properties = broker.message_properties("0b5e", "text/plain", broker.replay_headers({"x-tracker-reason": "r"}))
    assert (properties.message_id, properties.content_type, properties.delivery_mode, properties.headers) == (
        "0b5e",
        "text/plain",
        2,
        None,
    )


def test_only_a_connection_that_held_resets_the_reconnect_delay() -> None:
    delay = broker.ReconnectDelay(steady_s=5.0)
    assert 0.2 <= delay.after(None) <= 0.25  # no connection was made
    assert 0.4 <= delay.after(4.9) <= 0.5  # one that broke at once backs off further
    assert 0.8 <= delay.after(0.0) <= 1.0
    assert 0.2 <= delay.after(5.0) <= 0.25  # one that held starts again from the first
