"""What only the tests start: a `tracker consume` child that says when it is subscribed, and a
`tracker` command run to its end. Children themselves are bench.processes, shared with the benchmark."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Mapping

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
