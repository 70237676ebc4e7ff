"""Fixtures of the integration tests: users with each role and the app (test_api, test_attacks), a raw channel."""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest
import sqlalchemy as sa
from pika.adapters.blocking_connection import BlockingChannel

from tests.integration.test_api import FAST_PASSWORDS, PASSWORD, Api, build
from tracker.broker import declare_topology
from tracker.config import Settings
from tracker.users import UserStore


@pytest.fixture
def users(engine: sa.Engine) -> UserStore:
    store = UserStore(engine, FAST_PASSWORDS)
    for name, role in (("admin", "admin"), ("ops", "operations"), ("viewer", "read-only")):
        store.add(name, role, PASSWORD)
    return store


@pytest.fixture
def api(settings: Settings, engine: sa.Engine, users: UserStore) -> Api:
    return build(settings, engine, users)


@pytest.fixture
def raw_channel(settings: Settings) -> Iterator[BlockingChannel]:
    """A confirming channel of the test's own, on the topology the test's settings name."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = connection.channel()
    declare_topology(channel, settings)
    channel.confirm_delivery()
    yield channel
    connection.close()
