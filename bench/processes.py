"""The children of the benchmark and of the tests: the environment that configures a `tracker`
command, children that are started (and restarted), watched, killed or stopped, their output kept
in a log file, and what the benchmark measures of them.

The tests use these too (tests/processes.py adds what only they need); this package imports
nothing of theirs (an import-linter contract in pyproject.toml says so).
"""

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
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessFailed(RuntimeError):
    """A child process exited early, never became ready, or would not stop."""


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a `tracker` command use ``settings`` and nothing from outside."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    env.update(settings.to_env())
    env["TRACKER_LOG_LEVEL"] = "INFO"
    env.update(extra)
    return env


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


def tracker_command(*args: str) -> list[str]:
    """``tracker ARGS`` as installed beside this interpreter, else the module it runs."""
    script = pathlib.Path(sys.executable).with_name("tracker")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "tracker.cli", *args]


def bench_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"bench.{module}", *args]


def tracker_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """An environment that makes the tracker use ``settings``, and ``python -m bench.…`` find this checkout."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return environment(settings, PYTHONPATH=path, **extra)


def cpu_seconds(stat: pathlib.Path) -> float:
    """User plus system CPU time so far of the process or thread whose ``/proc/…/stat`` this is.

    Raises OSError if it has gone.
    """
    text = stat.read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class MeasuredChild(Child):
    """A child whose memory and CPU time the benchmark reads from ``/proc``."""

    def rss_bytes(self) -> int:
        """Resident set size now (VmRSS)."""
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ProcessFailed(f"{self.name}: no VmRSS in /proc/{self.pid}/status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far, of the process itself (threads included)."""
        return cpu_seconds(pathlib.Path(f"/proc/{self.pid}/stat"))
