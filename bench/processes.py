"""The benchmark's children: the commands it runs, their environment, and what it measures of them.

Starting, watching and stopping them is ``tests.processes``, shared with the tests.
"""

from __future__ import annotations

import os
import pathlib
import sys

from tests.processes import ROOT, Child, ProcessFailed, environment
from tracker.config import Settings

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
