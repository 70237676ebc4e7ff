"""CPU time of the processes a measurement involves, read from /proc: children, servers found by port, groups.

Linux only. A process that is not on this machine (a server in a container or on another host)
is not found, and the figures that need it are reported as absent rather than guessed.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Iterable

from bench.processes import cpu_seconds

_PROC = pathlib.Path("/proc")
_LISTEN = "0A"  # the state of a listening socket in /proc/net/tcp


def comm(pid: int) -> str | None:
    """The process's name (``/proc/PID/comm``), or None if there is no such process."""
    try:
        return (_PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return None


def cpu_of(pid: int) -> float | None:
    """User plus system CPU seconds so far of ``pid`` (all its threads), or None if it has gone."""
    try:
        return cpu_seconds(_PROC / str(pid) / "stat")
    except (OSError, ValueError, IndexError):
        return None


def _parent(pid_dir: pathlib.Path) -> int | None:
    try:
        text = (pid_dir / "stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[1])


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children and so on (not ``pid`` itself), as they are now."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (parent := _parent(entry)) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def listening_pid(port: int) -> int | None:
    """The process of this machine listening on TCP ``port`` (any address), or None if none is found.

    Needs to read other processes' ``/proc/PID/fd`` (root, or the same user as the server).
    """
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (_PROC / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if fd.readlink().as_posix() in inodes:
                        return int(entry.name)
    return None


def machine_ticks() -> tuple[int, int]:
    """The whole machine's CPU ticks so far, every process's: (all, idle), idle counting iowait (/proc/stat)."""
    ticks = [int(value) for value in (_PROC / "stat").read_text().splitlines()[0].split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]


def ticks_since(before: tuple[int, int]) -> tuple[int, int]:
    """The (all, idle) ticks elapsed since ``before`` (a ``machine_ticks()``)."""
    now = machine_ticks()
    return now[0] - before[0], now[1] - before[1]


class CpuMeter:
    """The CPU seconds a changing set of processes spends from ``start()`` on.

    ``find`` names the processes of the group (it is asked at every ``sample()``): one already
    there at the start counts from its CPU then; one that appears later counts all of its CPU
    (it began within the window); one that ends counts up to its last sample. So sample often
    enough to see short-lived processes.
    """

    def __init__(self, find: Callable[[], Iterable[int]]) -> None:
        self._find = find
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._started = False

    def start(self) -> CpuMeter:
        self._first, self._last = {}, {}
        for pid in self._find():
            if (cpu := cpu_of(pid)) is not None:
                self._first[pid] = self._last[pid] = cpu
        self._started = True
        return self

    def sample(self) -> None:
        assert self._started, "start() first"
        for pid in self._find():
            if (cpu := cpu_of(pid)) is not None:
                self._first.setdefault(pid, 0.0)
                self._last[pid] = cpu

    @property
    def seen(self) -> int:
        """How many processes the group has had since the start."""
        return len(self._last)

    def seconds(self) -> float:
        """CPU seconds spent by the group since ``start()``, as of the latest sample."""
        return sum(self._last[pid] - self._first[pid] for pid in self._last)
