"""Whom the tests' own servers (RabbitMQ nodes, PostgreSQL servers) run as: run as root, a service's
own system user (PostgreSQL refuses root; RabbitMQ nodes share that user's Erlang cookie); run as
anyone else, that user."""

from __future__ import annotations

import os
import pathlib
import pwd
from typing import Any


class ServiceAccount:
    """The user a server and its tools run as, with its home.

    Raises LookupError, run as root, when there is no user ``name``.
    """

    def __init__(self, name: str) -> None:
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                raise LookupError(f"running as root, but there is no {name} user to run them as") from None
            self.uid: int | None = entry.pw_uid
            self.gid: int | None = entry.pw_gid
            self.home = entry.pw_dir
        else:
            self.uid = self.gid = None
            self.home = os.environ.get("HOME", str(pathlib.Path.home()))

    def popen_args(self, group: int | None = None) -> dict[str, Any]:
        """subprocess.Popen's arguments that run a child as this user, under ``group`` instead of its
        own if given (none when it is us)."""
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid if group is None else group, "extra_groups": []}

    def own(self, path: pathlib.Path) -> None:
        """Make ``path`` this user's."""
        if self.uid is not None:
            os.chown(path, self.uid, self.gid or -1)
