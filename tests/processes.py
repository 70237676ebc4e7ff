"""`tracker` commands as real processes: the environment that configures them, and consumers the
tests can kill, stop and restart, their logs kept in files."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from tracker.config import Settings

READY_LINE = "consuming "  # what consumers.amqp logs once it is subscribed


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a `tracker` command use ``settings`` and nothing from outside."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    env.update(settings.to_env())
    env["TRACKER_LOG_LEVEL"] = "INFO"
    env.update(extra)
    return env


class ConsumerProcess:
    """One `python -m tracker.cli consume`; output goes to ``log_path`` (appended across restarts)."""

    def __init__(self, env: Mapping[str, str], log_path: pathlib.Path) -> None:
        self._env = dict(env)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.starts = 0

    def start(self) -> ConsumerProcess:
        assert not self.alive, "already running"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tracker.cli", "consume"],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log_path.parent,
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once this run has subscribed to the queue; fail if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.output(since_start=True):
                return
            if not self.alive:
                raise AssertionError(f"consumer exited with {self.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        raise AssertionError(f"consumer not consuming after {timeout} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no chance to finish, ack or close anything."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=10)

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM and wait; (exit status, seconds it took). Kills it and fails if it hangs."""
        assert self._process is not None
        started = time.monotonic()
        self._process.send_signal(signal.SIGTERM)
        try:
            code = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise AssertionError(f"consumer ignored SIGTERM for {timeout} s:\n{self.tail()}") from None
        return code, time.monotonic() - started

    def output(self, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset if since_start else 0)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])
