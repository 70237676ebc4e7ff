"""Several broker addresses (SPEC §10) against the real local RabbitMQ: addresses where nothing
listens are passed over, and when none answers the error says so as it does for one address."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from bench.processes import environment, free_port
from tests.polling import poll_until
from tests.processes import ConsumerProcess
from tracker import broker
from tracker.config import Settings
from tracker.errors import PublishFailed
from tracker.publisher import Publisher
from tracker.store import make_engine, open_job_store

pytestmark = [pytest.mark.rabbitmq]


def dead_address(user: str = "guest:guest") -> str:
    """A broker URL of 127.0.0.1 on a port nothing listens on."""
    return f"amqp://{user}@127.0.0.1:{free_port()}/%2F"


def test_a_connector_passes_over_dead_addresses_whatever_their_order(rabbitmq_server: str) -> None:
    urls = f"{dead_address()},{dead_address()},{rabbitmq_server}"
    real = broker.address(rabbitmq_server)
    tried_a_dead_one_first = 0
    for seed in range(12):
        connector = broker.Connector(urls, "test-addresses", rng=random.Random(seed))
        tried_a_dead_one_first += broker.Rotation(3, random.Random(seed)).order()[0] != 2
        connector.connect().close()
        assert connector.node == real
    assert tried_a_dead_one_first  # else this test showed nothing


def test_consumer_and_publisher_work_through_a_list_whose_first_address_is_dead(settings: Settings, tmp_path) -> None:
    through_list = settings.with_(amqp_url=f"{dead_address()}, {settings.amqp_url}")
    engine = make_engine(settings.database_url)
    try:
        job = open_job_store(engine).create_job("Deploying.")
        consumer = ConsumerProcess(environment(through_list), tmp_path / "consumer.log").start()
        try:
            consumer.wait_ready()
            assert f"at {broker.address(settings.amqp_url)} " in consumer.output()
            with Publisher(through_list) as publisher:
                publisher.emit(job.id, "succeeded", "Deployed.")
            row = poll_until(
                lambda: (got := open_job_store(engine).get_job(job.id)).status == "SUCCEEDED" and got,
                20,
                "the event folded into the row",
            )
            assert row.message == "Deployed."
        finally:
            consumer.stop()
    finally:
        engine.dispose()


def test_only_dead_addresses_give_the_clear_error_one_dead_address_gives(settings: Settings, tmp_path) -> None:
    one, two = dead_address(), dead_address()
    for urls, named in ((one, [one]), (f"{one},{two}", [one, two])):
        done = subprocess.run(
            [sys.executable, "-m", "tracker.cli", "dead"],
            env=environment(settings.with_(amqp_url=urls)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1
        assert done.stderr.startswith("tracker: cannot reach RabbitMQ: no node answered: ")
        for url in named:
            assert f"{broker.address(url)} (" in done.stderr
            assert "Connection refused" in done.stderr
    with (
        Publisher(settings.with_(amqp_url=f"{one},{two}"), timeout_s=1.0) as publisher,
        pytest.raises(PublishFailed, match="not confirmed: BrokerUnreachable"),
    ):
        publisher.emit(1, "progress", "nobody answers")


def test_a_consumer_with_no_node_answering_retries_and_never_logs_a_password(settings: Settings, tmp_path) -> None:
    urls = f"{dead_address('tracker:s3cret-pw')},{dead_address('tracker:s3cret-pw')}"
    env = environment(settings.with_(amqp_url=urls), TRACKER_LOG_LEVEL="DEBUG")  # each retry's line too
    consumer = ConsumerProcess(env, tmp_path / "consumer.log").start()
    try:
        poll_until(lambda: consumer.output().count("broker connection lost (BrokerUnreachable") >= 2, 30, "two retries")
        assert consumer.alive
        # Said once at warning level, not once per retry.
        warned = [line for line in consumer.output().splitlines() if " WARNING consumers.amqp" in line]
        assert len(warned) == 1 and "broker unavailable: BrokerUnreachable" in warned[0], consumer.output()
    finally:
        consumer.stop()
    assert "s3cret" not in consumer.output()
