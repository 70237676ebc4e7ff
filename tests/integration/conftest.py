"""Fixtures of the in-process API tests (test_api.py, test_attacks.py): users with each role, and the app."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.integration.test_api import FAST_PASSWORDS, PASSWORD, Api, build
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
