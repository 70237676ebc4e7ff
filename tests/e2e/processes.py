"""Starting `tracker` commands as real processes for end-to-end tests, and stopping them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping

from tracker.config import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The process environment that makes `tracker` use ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update({
        "TRACKER_DATABASE_URL": settings.database_url,
        "TRACKER_AMQP_URL": settings.amqp_url,
        "TRACKER_SECRET": settings.secret or "",
        "TRACKER_SECRET_FILE": settings.secret_file,
        "TRACKER_BIND": settings.bind,
        "TRACKER_EXCHANGE": settings.exchange,
        "TRACKER_QUEUE": settings.queue,
        "TRACKER_DEAD_EXCHANGE": settings.dead_exchange,
        "TRACKER_DEAD_QUEUE": settings.dead_queue,
        "TRACKER_WORKERS": str(settings.workers),
    })
    env.update(extra)
    return env


def start(command: str, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tracker.cli", command], env=dict(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> tuple[int, str]:
    """SIGTERM, wait, and return (exit status, output); kills and fails loudly if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"process did not stop within {timeout} s:\n{output.decode(errors='replace')}")
    return process.returncode, output.decode(errors="replace")


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise AssertionError(f"process exited with {process.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def running_api(settings: Settings, **extra_env: str) -> Iterator[str]:
    """`tracker api` on a free port; yields its base URL, stops it (exit 0 expected) afterwards."""
    port = free_port()
    env = environment(settings.with_(bind=f"127.0.0.1:{port}"), **extra_env)
    process = start("api", env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/api/5.0/ping", process)
        yield base
    finally:
        code, output = stop(process)
    assert code == 0, f"tracker api exited with {code}:\n{output}"
