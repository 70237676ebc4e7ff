"""Fault-scenario fixtures: settings, RabbitMQ nodes and PostgreSQL servers of a test's own, consumer
processes, the scale and the seed.

TRACKER_FAULTS_SCALE=long (``make faults-long``) runs every scenario much longer and harder;
the default is a bounded run for ``make test``. TRACKER_FAULTS_SEED replays a stream.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import sqlalchemy as sa

from bench.processes import environment
from tests.cluster import Cluster, ClusterUnavailable, running_cluster
from tests.conftest import AMQP_URL, settings_for
from tests.processes import ConsumerProcess
from tests.replication import Pair, ServersUnavailable, running_pair
from tracker.config import Settings
from tracker.leases import MAX_TIMEOUT_S
from tracker.store import JobStore, make_engine, open_job_store

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Scale:
    name: str

    def pick(self, bounded: T, long: T) -> T:
        """The figure for this run: ``long`` under TRACKER_FAULTS_SCALE=long, else ``bounded``."""
        return long if self.name == "long" else bounded


@pytest.fixture(scope="session")
def scale() -> Scale:
    return Scale(os.environ.get("TRACKER_FAULTS_SCALE", "bounded"))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    seed = int(os.environ.get("TRACKER_FAULTS_SEED") or random.SystemRandom().randrange(2**32))
    # Shown with the failure, so a stream that broke something can be replayed.
    request.node.user_properties.append(("seed", seed))
    print(f"TRACKER_FAULTS_SEED={seed}")
    return random.Random(seed)


def harness_settings(
    database_url: str, amqp_url: str, tmp_path: pathlib.Path, names: dict[str, str] | None = None
) -> Settings:
    """``settings_for`` with the cancel grace at its longest. The stream plans cancel requests
    (SPEC §12) that no worker answers: past the grace the lost-job check would fail their jobs,
    which the oracle (the merge rule over the events sent) cannot know of. The grace has tests of
    its own (tests/e2e/test_cancel.py)."""
    return settings_for(database_url, amqp_url, tmp_path, names).with_(cancel_grace_s=MAX_TIMEOUT_S)


@pytest.fixture
def settings_on(postgres_url: str, tmp_path) -> Callable[[str], Settings]:
    """Settings on the session's PostgreSQL database for a broker at the URL given (one URL or a
    cluster's list), under new broker names of this test's own."""
    return lambda amqp_url: harness_settings(postgres_url, amqp_url, tmp_path)


@pytest.fixture
def fault_settings(postgres_url: str, amqp_names: dict[str, str], tmp_path) -> Settings:
    """Settings on the session's PostgreSQL database and the local RabbitMQ, under this test's own names."""
    return harness_settings(postgres_url, AMQP_URL, tmp_path, amqp_names)


def nodes_of_our_own(size: int, net_ticktime: int | None = None) -> Iterator[Cluster]:
    """For a fixture: ``size`` RabbitMQ nodes of the test's own, joined (tests/cluster.py), removed
    after it however it ends. The test fails, saying why, when they cannot be run here."""
    try:
        with running_cluster(size, net_ticktime=net_ticktime) as started:
            yield started
    except ClusterUnavailable as exc:
        pytest.fail(f"{size} RabbitMQ node(s) of the test's own could not be run: {exc}")


def servers_of_our_own(*, synchronous: bool) -> Iterator[Pair]:
    """For a fixture: a PostgreSQL primary and a standby of the test's own (tests/replication.py),
    synchronous or not, removed after it however it ends. The test fails, saying why, when they
    cannot be run here."""
    try:
        with running_pair(synchronous=synchronous) as started:
            yield started
    except ServersUnavailable as exc:
        pytest.fail(f"a PostgreSQL primary and standby of the test's own could not be run: {exc}")


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(pg_engine: sa.Engine) -> JobStore:
    return open_job_store(pg_engine)


@pytest.fixture
def spawn_consumer(tmp_path) -> Iterator[Callable[..., ConsumerProcess]]:
    """Start a `tracker consume` process for given settings; any still running are killed after."""
    spawned: list[ConsumerProcess] = []

    def spawn(settings: Settings, name: str, **extra_env: str) -> ConsumerProcess:
        process = ConsumerProcess(environment(settings, **extra_env), tmp_path / f"{name}.log")
        spawned.append(process.start())
        return process

    yield spawn
    for process in spawned:
        if process.alive:
            process.kill()
