"""Freezing start-up's objects: out of later collections' sight, while later garbage is still collected."""

from __future__ import annotations

import gc
import secrets
import weakref

import pytest

from api import server
from consumers import amqp
from tracker import gcfreeze
from tracker.config import Settings


class _Node:
    pass


def test_what_is_alive_is_no_longer_traversed_and_what_comes_later_is() -> None:
    kept = _Node()
    before = gc.get_freeze_count()
    try:
        gcfreeze.freeze_startup_objects()
        assert gc.get_freeze_count() > before
        assert not any(found is kept for found in gc.get_objects())  # frozen: in no generation
        made_later = _Node()
        made_later.itself = made_later  # garbage only a collection can free
        freed = weakref.ref(made_later)
        assert any(found is made_later for found in gc.get_objects())
        del made_later
        gc.collect()
        assert freed() is None  # later garbage is still collected
    finally:
        gc.unfreeze()


def _settings(tmp_path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'gcfreeze.db'}",
        amqp_url="amqp://127.0.0.1:1/",
        secret=secrets.token_urlsafe(48),
    )


def test_each_api_worker_freezes_once_its_app_is_built(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    app = object()
    monkeypatch.setattr(server, "get_app", lambda _settings, _waits: steps.append("app") or app)
    monkeypatch.setattr(gcfreeze, "freeze_startup_objects", lambda: steps.append("freeze"))
    assert server._Gunicorn(_settings(tmp_path), False).load() is app  # noqa: SLF001
    assert steps == ["app", "freeze"]


def test_the_consumer_freezes_before_it_consumes(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    monkeypatch.setattr(gcfreeze, "freeze_startup_objects", lambda: steps.append("freeze"))
    monkeypatch.setattr(amqp.Consumer, "install_signal_handlers", lambda _self: steps.append("signals"))
    monkeypatch.setattr(amqp.Consumer, "run", lambda _self: steps.append("run"))
    assert amqp.consume(_settings(tmp_path)) == 0
    assert steps == ["signals", "freeze", "run"]
