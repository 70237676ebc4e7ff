"""The processes under test and the references, as child processes: started, watched, stopped."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from tracker.config import Settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessFailed(RuntimeError):
    """A child process exited early or never became ready."""


def tracker_command(*args: str) -> list[str]:
    """``tracker ARGS`` as installed beside this interpreter, else the module it runs."""
    script = pathlib.Path(sys.executable).with_name("tracker")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "tracker.cli", *args]


def bench_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"bench.{module}", *args]


def tracker_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """An environment that makes the tracker use ``settings`` and nothing else of ours."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    env.update(settings.to_env())
    env["TRACKER_LOG_LEVEL"] = "INFO"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(stat: pathlib.Path) -> float:
    """User plus system CPU time so far of the process or thread whose ``/proc/…/stat`` this is.

    Raises OSError if it has gone.
    """
    text = stat.read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class Child:
    """One child process, its output kept in ``log``; stopped with SIGTERM (then SIGKILL)."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        log_dir: pathlib.Path,
        capture_stdout: bool = False,
    ) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                list(command),
                env=dict(env),
                cwd=ROOT,
                stdout=subprocess.PIPE if capture_stdout else log,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def check_alive(self) -> None:
        if not self.alive:
            raise ProcessFailed(f"{self.name} exited with {self._process.returncode}:\n{self.tail()}")

    def rss_bytes(self) -> int:
        """Resident set size now (VmRSS)."""
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ProcessFailed(f"{self.name}: no VmRSS in /proc/{self.pid}/status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far, of the process itself (threads included)."""
        return cpu_seconds(pathlib.Path(f"/proc/{self.pid}/stat"))

    def wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise ProcessFailed(f"{self.name} did not listen on {port} within {timeout:.0f} s:\n{self.tail()}")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            self.check_alive()
            time.sleep(0.05)
        raise ProcessFailed(f"{self.name} did not log {text!r} within {timeout:.0f} s:\n{self.tail()}")

    def output(self, timeout: float) -> str:
        """Wait for the process to exit and return its stdout (``capture_stdout`` only)."""
        try:
            out, _ = self._process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise ProcessFailed(f"{self.name} still running after {timeout:.0f} s:\n{self.tail()}") from None
        if self._process.returncode != 0:
            raise ProcessFailed(f"{self.name} exited with {self._process.returncode}:\n{self.tail()}")
        return out.decode()

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
