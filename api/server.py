"""Serving the API with gunicorn: sync workers, each building its own app (and database engine)."""

from __future__ import annotations

from typing import Any

import falcon
from gunicorn.app.base import BaseApplication

from api.app import get_app
from tracker import auth
from tracker.config import Settings

GRACEFUL_TIMEOUT_S = 10


def serve(settings: Settings, access_log: bool = False) -> None:
    """Run the API on ``settings.bind`` with ``settings.workers`` workers until told to stop.

    The secret is settled before the workers fork, so they all sign with the same one. Raises
    ValueError for an unusable secret; exits the process (gunicorn's way) if it cannot bind.
    """
    secret = auth.load_secret(settings.secret, settings.secret_file)
    _Gunicorn(settings.with_(secret=secret), access_log).run()


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from Settings rather than from the command line."""

    def __init__(self, settings: Settings, access_log: bool) -> None:
        self._settings = settings
        self._options: dict[str, Any] = {
            "bind": settings.bind,
            "workers": settings.workers,
            "worker_class": "sync",
            # No preload: each worker makes its own engine, so no connection crosses a fork.
            "preload_app": False,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "accesslog": "-" if access_log else None,  # off unless asked for
            "proc_name": "tracker-api",
        }
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)
        if "control_socket_disable" in self.cfg.settings:  # newer gunicorn only
            # Its one per-user socket path would collide between API processes on one host.
            self.cfg.set("control_socket_disable", True)

    def load(self) -> falcon.App:
        return get_app(self._settings)
