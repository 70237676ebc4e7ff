"""Each long-running process freezes start-up's objects (``gc.freeze``) once it has built them, before it serves."""

from __future__ import annotations

import gc
import secrets

import pytest

from api import server
from consumers import amqp
from tracker.config import Settings


def _settings(tmp_path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'gcfreeze.db'}",
        amqp_url="amqp://127.0.0.1:1/",
        secret=secrets.token_urlsafe(48),
        metrics_bind="",  # no metrics endpoint: a unit test binds no port
    )


def test_each_api_worker_freezes_once_its_app_is_built(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    app = object()
    monkeypatch.setattr(server, "get_app", lambda _settings, _waits: steps.append("app") or app)
    monkeypatch.setattr(gc, "freeze", lambda: steps.append("freeze"))
    assert server._Gunicorn(_settings(tmp_path), False).load() is app  # noqa: SLF001
    assert steps == ["app", "freeze"]


def test_the_consumer_freezes_before_it_consumes(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    monkeypatch.setattr(gc, "freeze", lambda: steps.append("freeze"))
    monkeypatch.setattr(amqp.Consumer, "install_signal_handlers", lambda _self: steps.append("signals"))
    monkeypatch.setattr(amqp.Consumer, "run", lambda _self: steps.append("run"))
    assert amqp.consume(_settings(tmp_path)) == 0
    assert steps == ["signals", "freeze", "run"]
