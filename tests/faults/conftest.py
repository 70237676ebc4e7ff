"""Fault-scenario fixtures: PostgreSQL settings, consumer processes, the scale and the random seed.

TRACKER_FAULTS_SCALE=long (``make faults-long``) runs every scenario much longer and harder;
the default is a bounded run for ``make test``. TRACKER_FAULTS_SEED replays a stream.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import sqlalchemy as sa

from bench.processes import environment
from tests.conftest import AMQP_URL, TEST_SECRET
from tests.processes import ConsumerProcess
from tracker.config import Settings
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


@pytest.fixture
def fault_settings(postgres_url: str, amqp_names: dict[str, str], tmp_path) -> Settings:
    """Settings on the session's PostgreSQL database and this test's own broker names."""
    return Settings(
        database_url=postgres_url,
        amqp_url=AMQP_URL,
        secret=TEST_SECRET,
        secret_file=str(tmp_path / "secret"),
        metrics_bind="127.0.0.1:0",
        **amqp_names,
    )


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
