"""Waiting for a job (SPEC §7, ``Prefer: wait=N``): the header read as RFC 7240 says, requests held until told.

``WaitRegistry`` knows which requests wait for which job and wakes them, and holds no more of them
than its caps allow (in all, and per user); something else tells it what changed: on PostgreSQL
the row cache's NOTIFY listener, otherwise (SQLite, or while that listener is not listening) one
``StatusPoller`` thread per process. A held request whose client has gone (``client_gone``) ends
at once. docs/waiting.md says why.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

from tracker.backoff import Backoff
from tracker.errors import StoreUnavailable
from tracker.merge import PENDING
from tracker.model import Job

log = logging.getLogger(__name__)

MIN_WAIT_S = 1
MAX_WAIT_S = 60
POLL_S = 0.01
CLIENT_CHECK_S = 0.25  # how often a held request looks whether its client is still there
_MAX_BACKOFF_S = 2.0
_LIVE_RECHECK_S = 0.1

# RFC 7240 §2: preference = token [ BWS "=" BWS word ] *( OWS ";" [ OWS parameter ] ), in a
# comma-separated list; word = token / quoted-string. Only the name and value of each matter here.
_PREFERENCE = re.compile(
    r"""[ \t]*(?P<name>[!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*
        (?:=[ \t]*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^ \t;,"]*)))?
        [ \t]*(?:;(?:"(?:[^"\\]|\\.)*"|[^,"])*)?(?:,|$)""",
    re.VERBOSE,
)


def preferred_wait(prefer: str | None) -> int | None:
    """The seconds a request's ``Prefer`` header asks to wait (capped at MAX_WAIT_S), or None.

    None when there is no ``wait`` preference or its value is not delta-seconds from MIN_WAIT_S up:
    such a preference is ignored, as RFC 7240 §2 has servers ignore what they do not understand.
    Only the first ``wait`` counts (RFC 7240 §2: a repeated preference is ignored).
    """
    if not prefer:
        return None
    position = 0
    while position < len(prefer):
        while position < len(prefer) and prefer[position] in " \t,":  # empty list elements are allowed
            position += 1
        if position == len(prefer):
            return None
        match = _PREFERENCE.match(prefer, position)
        if match is None or match.end() == position:
            return None
        position = match.end()
        if match["name"].lower() != "wait":
            continue
        value = match["quoted"] if match["quoted"] is not None else match["token"]
        if not value or not value.isascii() or not value.isdigit():
            return None
        digits = value.lstrip("0")
        if len(digits) > len(str(MAX_WAIT_S)):  # no int() of thousands of digits
            return MAX_WAIT_S
        seconds = int(digits or "0")
        return None if seconds < MIN_WAIT_S else min(seconds, MAX_WAIT_S)
    return None


class Waiter:
    """One held request: woken when its job may have changed, or when the registry stops."""

    __slots__ = ("_event", "job_id")

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Whether it was woken within ``timeout`` seconds (since the last ``clear``)."""
        return self._event.wait(timeout)

    def clear(self) -> None:
        self._event.clear()


Cap = Literal["process", "user"]


class WaitCounts(Protocol):
    """What a registry reports as it goes (the API's metrics: ``api.metrics.WaitMetrics``)."""

    def held(self, change: int) -> None:
        """One more request held (+1), or one fewer (-1)."""

    def refused(self, cap: Cap) -> None:
        """A request was not held: ``cap`` (``process`` or ``user``) was reached."""


class WaitRegistry:
    """Which requests wait for which job, and the means to wake them. Thread-safe; no I/O.

    At most ``most`` requests are held at once, and at most ``most_per_user`` of one user's
    (None: no cap): each is a thread of an API worker, and the worker needs some for everything
    else (docs/waiting.md, "Capacity").
    """

    def __init__(self, most: int | None = None, most_per_user: int | None = None) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[int, set[Waiter]] = collections.defaultdict(set)
        self._someone_waits = threading.Condition(self._lock)
        self._stopping = False
        self._most = most
        self._most_per_user = most_per_user
        self._held = 0
        self._held_by: collections.Counter[str] = collections.Counter()
        self._counts: WaitCounts | None = None
        # SPEC §13's streams wait for any change, not a job's: each notify moves the generation
        self._generation = 0
        self._changed = threading.Condition(self._lock)
        self._bells: list[Callable[[], None]] = []

    def count_in(self, counts: WaitCounts) -> None:
        """Report to ``counts`` from now on (set once, before the first request: the registry is
        made before the metrics can be loaded, in gunicorn's master)."""
        self._counts = counts

    @property
    def held(self) -> int:
        """How many requests are held now."""
        return self._held

    @contextlib.contextmanager
    def admitted(self, user: str) -> Iterator[bool]:
        """Whether a request of ``user`` may be held now (neither cap is reached); if so, it counts
        against both caps until the block ends."""
        with self._lock:
            cap: Cap | None = None
            if self._most is not None and self._held >= self._most:
                cap = "process"
            elif self._most_per_user is not None and self._held_by[user] >= self._most_per_user:
                cap = "user"
            else:
                self._held += 1
                self._held_by[user] += 1
        counts = self._counts
        if cap is not None:
            if counts is not None:
                counts.refused(cap)
            yield False
            return
        if counts is not None:
            counts.held(1)
        try:
            yield True
        finally:
            with self._lock:
                self._held -= 1
                self._held_by[user] -= 1
                if not self._held_by[user]:
                    del self._held_by[user]
            if counts is not None:
                counts.held(-1)

    @contextlib.contextmanager
    def watch(self, job_id: int) -> Iterator[Waiter]:
        """A Waiter for ``job_id``, registered for the block: woken by ``notify`` of that job."""
        waiter = Waiter(job_id)
        with self._lock:
            self._waiters[job_id].add(waiter)
            if self._stopping:
                waiter.wake()
            self._someone_waits.notify_all()
        try:
            yield waiter
        finally:
            with self._lock:
                waiters = self._waiters.get(job_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[job_id]

    def notify(self, job_ids: Iterable[int] | None) -> None:
        """Wake the requests waiting for ``job_ids`` (None: every one)."""
        with self._lock:
            if job_ids is None:
                woken = [waiter for waiters in self._waiters.values() for waiter in waiters]
            else:
                woken = [waiter for job_id in job_ids for waiter in self._waiters.get(job_id, ())]
            self._generation += 1
            self._changed.notify_all()
        for waiter in woken:
            waiter.wake()
        for bell in self._bells:
            bell()

    def ring_on_change(self, bell: Callable[[], None]) -> None:
        """Call ``bell`` (cheap, any thread) at each ``notify`` and at ``stop`` from now on: the
        stream pump (api/pump.py) sleeps in a selector, not on this registry's condition."""
        self._bells.append(bell)

    @property
    def generation(self) -> int:
        """A number that moves with every ``notify``: read it before reading what changed."""
        return self._generation

    def changed_after(self, generation: int, timeout: float) -> bool:
        """Block until ``notify`` has been called since ``generation`` was read (True), or
        ``timeout`` passes, or the registry is stopping (False)."""
        with self._lock:
            return self._changed.wait_for(lambda: self._generation != generation or self._stopping, timeout) and (
                not self._stopping
            )

    def stop(self) -> None:
        """From now on no request is held: those held are woken, later ones not held (shutdown)."""
        with self._lock:
            self._stopping = True
        self.notify(None)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def waited_ids(self) -> list[int]:
        """The jobs someone waits for now."""
        with self._lock:
            return list(self._waiters)

    def wait_for_waiters(self, timeout: float) -> bool:
        """Block until someone waits (True) or ``timeout`` passes (False)."""
        with self._lock:
            return self._someone_waits.wait_for(lambda: bool(self._waiters), timeout)

    def hold(
        self,
        job_id: int,
        seconds: float,
        read: Callable[[int], Job],
        gone: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_s: float = CLIENT_CHECK_S,
    ) -> Job:
        """The job's row once it is no longer PENDING, or as it is after ``seconds`` (or at stop).

        Registered before the first read, so that no change committed after that read can go
        unnoticed. With ``gone``, asked every ``check_s`` while held: once it says the client has
        gone, the row last read is returned at once (nobody will read the answer). Raises what
        ``read`` raises (JobNotFound, StoreUnavailable).
        """
        deadline = clock() + seconds
        with self.watch(job_id) as waiter:
            job = read(job_id)
            while job.status == PENDING and not self._stopping:
                remaining = deadline - clock()
                if remaining <= 0:
                    # Time is up: the row as a plain GET would give it now (its message may
                    # have changed without anyone being woken).
                    return read(job_id)
                if not waiter.wait(remaining if gone is None else min(remaining, check_s)):
                    if gone is not None and gone():
                        return job
                    continue
                waiter.clear()  # before the read: a change after it wakes the next wait
                job = read(job_id)
        return job


def client_gone_check(environ: Mapping[str, Any]) -> Callable[[], bool] | None:
    """A check of whether the client of a request has gone (``client_gone`` of its socket), or
    None when the server does not say which socket it is (gunicorn puts it in ``gunicorn.socket``)."""
    sock = environ.get("gunicorn.socket")
    return functools.partial(client_gone, sock) if isinstance(sock, socket.socket) else None


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer has closed its end of ``sock`` (EOF) or reset it; never blocks, reads nothing.

    Bytes it has sent (a pipelined next request) are left where they are: they are peeked at
    (MSG_PEEK), not read, and only to tell them from an EOF. ``socket.socket.recv`` itself is
    called, past any subclass's (the API's deadline on reads, TLS), and only once ``poll`` has
    said there is something to read, so that it returns at once whatever the socket's timeout.
    """
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        if not poller.poll(0):
            return False
        return socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):  # reset, not connected, or closed here already
        return True


class ProcessThread:
    """A daemon thread of this process's own, running ``target(stopping)`` until ``stopping`` is
    set: started by the first ``start`` in each process (a forked worker starts its own, as it
    inherits none of its parent's threads), cheap to call again, stopped by ``stop``."""

    def __init__(self, target: Callable[[threading.Event], None], name: str) -> None:
        self._target = target
        self._name = name
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, before: Callable[[], None] = lambda: None) -> None:
        """Start the thread unless this process runs it already; ``before`` runs first, when it does."""
        if self._pid == os.getpid() and self._thread is not None:
            return
        with self._lock:
            if self._pid != os.getpid() or self._thread is None:
                self._pid = os.getpid()
                before()
                self._stopping = threading.Event()
                self._thread = threading.Thread(
                    target=self._target, args=(self._stopping,), name=self._name, daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Tell the thread to end; with a ``timeout``, wait that long for it (never from itself)."""
        self._stopping.set()
        thread = self._thread
        mine = thread is not None and self._pid == os.getpid() and thread is not threading.current_thread()
        if timeout is not None and mine and thread is not None:
            thread.join(timeout)


class StatusPoller:
    """One thread per process reading the status of the waited jobs every ``interval_s`` and waking
    those no longer PENDING, while ``live()`` says notifications cannot be relied on.

    It sleeps while no one waits. Started on first use in each process (after gunicorn's fork).
    ``change_counter()``, called once on the poller's thread, may give a function whose value
    moves whenever the database has had a commit (SQLite's data_version): then the statuses are
    read only after it has moved. That is sound because a wait is registered before its first
    read: a change that read missed was committed after it, so after the counter's value that
    the last reading of statuses went by.
    """

    def __init__(
        self,
        registry: WaitRegistry,
        statuses: Callable[[Sequence[int]], dict[int, str]],
        live: Callable[[], bool] = lambda: False,
        interval_s: float = POLL_S,
        change_counter: Callable[[], Callable[[], int] | None] = lambda: None,
    ) -> None:
        self._registry = registry
        self._statuses = statuses
        self._change_counter = change_counter
        self._read_at: int | None = None  # the counter's value when the statuses were last read
        self._live = live
        self._interval_s = interval_s
        self._thread = ProcessThread(self._run, "tracker-waits")

    def start(self) -> None:
        """Start the thread in this process unless it runs already; cheap to call per request."""
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._thread.stop(timeout)

    def _run(self, stopping: threading.Event) -> None:
        """Runs on the poller thread until close()."""
        backoff = Backoff(first=self._interval_s, cap=_MAX_BACKOFF_S)
        counter = self._change_counter()
        self._read_at = None
        while not stopping.is_set():
            if not self._registry.wait_for_waiters(timeout=1.0):
                continue
            if self._live():
                # Notifications wake the waits; look again now and then in case they stop.
                stopping.wait(max(self._interval_s, _LIVE_RECHECK_S))
                continue
            try:
                self._poll_once(counter)
            except StoreUnavailable as exc:
                delay = backoff.next()
                log.warning("waits: cannot read the waited jobs (%s); trying again in %.2f s", exc, delay)
            except Exception:
                delay = backoff.next()
                log.exception("waits: polling the waited jobs failed")
            else:
                backoff.reset()
                delay = self._interval_s
            stopping.wait(delay)

    def _poll_once(self, counter: Callable[[], int] | None) -> None:
        if counter is not None:
            value = counter()  # before the read, so that a commit after it moves it
            if value == self._read_at:
                return
            self._read_at = value
        ids = self._registry.waited_ids()
        if not ids:
            return
        statuses = self._statuses(ids)
        self._registry.notify([job_id for job_id in ids if statuses.get(job_id) != PENDING])
