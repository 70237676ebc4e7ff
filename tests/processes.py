"""Child processes for the tests and the benchmark: the environment that configures a `tracker`
command, and children that are started (and restarted), watched, killed or stopped, their output
kept in a log file."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Self

from tracker.config import Settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
READY_LINE = "consuming "  # what consumers.amqp logs once it is subscribed


class ProcessFailed(RuntimeError):
    """A child process exited early, never became ready, or would not stop."""


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a `tracker` command use ``settings`` and nothing from outside."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    env.update(settings.to_env())
    env["TRACKER_LOG_LEVEL"] = "INFO"
    env.update(extra)
    return env


def run_tracker(settings: Settings, *args: str, timeout: float = 60) -> str:
    """``tracker ARGS…`` as a command with ``settings``; its standard output. Fails unless it exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "tracker.cli", *args],
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def free_port() -> int:
    """A port of 127.0.0.1 the kernel just handed out (gunicorn cannot report the one it got for :0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Child:
    """One child process, run by ``start`` (again after it ends, if need be).

    Its stderr, and its stdout unless ``capture_stdout`` keeps that for ``stdout()``, are appended
    to ``log_path``.
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: pathlib.Path,
        *,
        cwd: pathlib.Path = ROOT,
        capture_stdout: bool = False,
    ) -> None:
        self.name = log_path.stem
        self.log_path = log_path
        self._command = list(command)
        self._env = dict(env)
        self._cwd = cwd
        self._capture_stdout = capture_stdout
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.starts = 0

    def start(self) -> Self:
        assert not self.alive, "already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command,
                env=self._env,
                cwd=self._cwd,
                stdout=subprocess.PIPE if self._capture_stdout else log,
                stderr=log,
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def check_alive(self) -> None:
        if not self.alive:
            raise ProcessFailed(f"{self.name} exited with {self.returncode}:\n{self.tail()}")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Return once this run has logged ``text``; fail if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output(since_start=True):
                return
            self.check_alive()
            time.sleep(0.05)
        raise ProcessFailed(f"{self.name} did not log {text!r} within {timeout:.0f} s:\n{self.tail()}")

    def wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        """Return once something listens on ``port`` of 127.0.0.1; fail if this exits or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise ProcessFailed(f"{self.name} did not listen on {port} within {timeout:.0f} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no chance to finish, ack or close anything."""
        process = self._started()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM and wait; (exit status, seconds it took). Kills it and fails if it hangs."""
        process = self._started()
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise ProcessFailed(f"{self.name} ignored SIGTERM for {timeout} s:\n{self.tail()}") from None
        return code, time.monotonic() - started

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it is still running after ``timeout``; nothing if it is not running."""
        if not self.alive:
            return
        process = self._started()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stdout(self, timeout: float) -> str:
        """Wait for the process to exit and return its stdout (``capture_stdout`` only); fail unless it exits 0."""
        process = self._started()
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise ProcessFailed(f"{self.name} still running after {timeout:.0f} s:\n{self.tail()}") from None
        if process.returncode != 0:
            raise ProcessFailed(f"{self.name} exited with {process.returncode}:\n{self.tail()}")
        return out.decode()

    def output(self, since_start: bool = False) -> str:
        """What is in the log: all of it, or what this run has written."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset if since_start else 0)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def _started(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, "not started"
        return self._process


class ConsumerProcess(Child):
    """One `python -m tracker.cli consume`, run in its log's folder."""

    def __init__(self, env: Mapping[str, str], log_path: pathlib.Path) -> None:
        super().__init__([sys.executable, "-m", "tracker.cli", "consume"], env, log_path, cwd=log_path.parent)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once this run has subscribed to the queue; fail if it exits or takes too long."""
        self.wait_for_log(READY_LINE, timeout)
