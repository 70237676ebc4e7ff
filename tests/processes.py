"""What only the tests start: a `tracker consume` child that says when it is subscribed, and a
`tracker` command run to its end. Children themselves are bench.processes, shared with the benchmark."""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping

from bench.processes import READY_LINE, Child, environment
from tracker.config import Settings


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


class ConsumerProcess(Child):
    """One `python -m tracker.cli consume`, run in its log's folder."""

    def __init__(self, env: Mapping[str, str], log_path: pathlib.Path) -> None:
        super().__init__([sys.executable, "-m", "tracker.cli", "consume"], env, log_path, cwd=log_path.parent)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once this run has subscribed to the queue; fail if it exits or takes too long."""
        self.wait_for_log(READY_LINE, timeout)


@contextlib.contextmanager
def script_workers(
    script: pathlib.Path, settings: Settings, ready: str
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """A starter of worker processes running ``script`` with the arguments given, under
    ``settings``: each start returns once the worker has printed the line ``ready`` (else the
    test fails with what it printed); whatever still runs is killed when the block ends."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: object) -> subprocess.Popen[str]:
        worker = subprocess.Popen(
            [sys.executable, str(script), *map(str, args)],
            env=environment(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(worker)
        assert worker.stdout is not None
        line = worker.stdout.readline()
        assert line == ready + "\n", line + worker.stdout.read()
        return worker

    try:
        yield start
    finally:
        for worker in started:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
