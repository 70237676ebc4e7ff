"""One thread per API process that writes to every open stream (SPEC §13), so a stream holds a socket, not a thread.

A stream's request is served on a worker thread as any other: authorised, its headers and first
frames written. Then its socket is handed here (``Pump.adopt``: a duplicate of the connection's
descriptor; the worker thread's own is closed without a byte, and the thread goes back to serve
others) and the pump owns it until the stream ends. The pump's thread sleeps in one selector
(epoll on Linux) on all its sockets and a bell that the wait registry rings at each notification
(the cache's listener, or SQLite's ringer); at each ring it reads the changes once for all the
streams at the same cursor with the same filters, and queues their frames. Sockets are written
without blocking: a client that reads nothing for ``STALL_S`` while frames wait for it, or lets
more than ``MAX_UNSENT`` bytes pile up, is dropped (it comes back with its Last-Event-ID), and no
other stream waits for it. Once a second it sends the keep-alive comments due and ends the
streams whose token has expired or been logged out. docs/streams.md and docs/scaling.md say more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable

from tracker import listing
from tracker.errors import StoreUnavailable
from tracker.store.cursor import Changes

log = logging.getLogger(__name__)

MAX_UNSENT = 1 << 20  # bytes queued for one client before it is dropped as too slow
STALL_S = 10.0  # how long a client may read nothing while frames wait for it
HOUSEKEEPING_S = 1.0  # keep-alives and ended sessions are looked at this often
FDS_KEPT = 512  # descriptors left for everything else (connections, the database, files)


@dataclasses.dataclass(eq=False)
class Opened:
    """A stream the pump holds: its socket, where it is, and what ends it."""

    sock: socket.socket
    query: listing.JobQuery
    cursor: int
    until_final: bool
    chunked: bool  # HTTP/1.1: each frame a chunk, ended by the empty chunk
    ended: Callable[[], bool]  # its session has expired or been logged out
    release: contextlib.ExitStack  # its place under the cap
    due: bool = False  # more rows wait to be read now
    quiet_since: float = 0.0
    unsent: bytearray = dataclasses.field(default_factory=bytearray)
    stalled_since: float | None = None
    closed: bool = False


def stream_cap(wanted: int) -> int:
    """How many streams one process can hold: ``wanted``, unless the descriptors it may open
    (RLIMIT_NOFILE, raised to its hard limit here) cannot take them and FDS_KEPT more."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + FDS_KEPT)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
    except (ValueError, OSError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    usable = max(0, soft - FDS_KEPT)
    if usable < wanted:
        log.warning("streams: %d descriptors allow %d streams per process, not %d", soft, usable, wanted)
    return min(wanted, usable)


class Pump:
    """The streams of one process. ``read`` reads the changes after a cursor (raises
    StoreUnavailable); ``frame`` renders one change; ``notified`` says whether notifications come
    (else it reads every ``unnotified_s``); ``stopping`` says when to end every stream. ``frames``
    renders changes read: the frames, whether a final state ends a job's stream (given
    ``until_final``), and whether more rows wait to be read."""

    def __init__(
        self,
        read: Callable[[int, listing.JobQuery], Changes],
        frames: Callable[[Changes, bool], tuple[list[bytes], bool, bool]],
        notified: Callable[[], bool],
        stopping: Callable[[], bool],
        keep_alive: bytes,
        keep_alive_s: float,
        unnotified_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._frames = frames
        self._notified = notified
        self._stopping = stopping
        self._keep_alive = keep_alive
        self._keep_alive_s = keep_alive_s
        self._unnotified_s = unnotified_s
        self._clock = clock
        self._lock = threading.Lock()
        self._arrived: list[Opened] = []
        self._open: set[Opened] = set()
        self._pid: int | None = None
        self._bell_out: socket.socket | None = None
        self._rung = False
        self._more = False

    def __len__(self) -> int:
        return len(self._open) + len(self._arrived)

    def adopt(self, opened: Opened) -> None:
        """Hold ``opened`` from now on (its first frames are written already); thread-safe."""
        opened.sock.setblocking(False)
        opened.quiet_since = self._clock()
        with self._lock:
            self._start()
            self._arrived.append(opened)
        self.ring()

    def ring(self) -> None:
        """Something changed (or a stream arrived): read. Cheap, from any thread."""
        bell = self._bell_out
        if bell is None or self._rung:
            return
        self._rung = True
        with contextlib.suppress(OSError):  # full already: it rings anyway
            bell.send(b"\0")

    def _start(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        bell_in, self._bell_out = socket.socketpair()
        bell_in.setblocking(False)
        self._bell_out.setblocking(False)
        thread = threading.Thread(target=self._run, args=(bell_in,), name="tracker-stream-pump", daemon=True)
        thread.start()

    def _run(self, bell_in: socket.socket) -> None:
        """The pump's thread: until the process stops."""
        selector = selectors.DefaultSelector()
        selector.register(bell_in, selectors.EVENT_READ, None)
        housekeeping_at = self._clock() + HOUSEKEEPING_S
        read_at = self._clock()
        try:
            while True:
                notified = self._notified()
                now = self._clock()
                timeout = max(0.0, min(housekeeping_at, read_at if not notified else housekeeping_at) - now)
                if self._more:
                    timeout = 0.0
                rung = False
                for key, mask in selector.select(timeout):
                    opened = key.data
                    if opened is None:
                        rung = True
                        with contextlib.suppress(OSError):
                            while bell_in.recv(4096):
                                pass
                        # After the drain: a ring from here on sends a byte again. One that came
                        # before is read below (the reads come after this).
                        self._rung = False
                        continue
                    if mask & selectors.EVENT_READ:
                        self._heard(selector, opened)
                    if mask & selectors.EVENT_WRITE and not opened.closed:
                        self._flush(selector, opened)
                with self._lock:
                    arrived, self._arrived = self._arrived, []
                for opened in arrived:
                    self._open.add(opened)
                    selector.register(opened.sock, selectors.EVENT_READ, opened)
                    opened.due = True
                if self._stopping():
                    for opened in list(self._open):
                        self._end(selector, opened, finished=True)
                    return
                now = self._clock()
                if rung or arrived or (not notified and now >= read_at):
                    for opened in self._open:
                        opened.due = True
                    read_at = now + self._unnotified_s
                self._read_due(selector)
                if now >= housekeeping_at:
                    self._housekeeping(selector, now)
                    housekeeping_at = now + HOUSEKEEPING_S
        except Exception:  # the streams end; their clients come back
            log.exception("streams: the pump failed; ending its streams")
            for opened in list(self._open):
                self._end(selector, opened, finished=False)
        finally:
            self._pid = None

    def _read_due(self, selector: selectors.BaseSelector) -> None:
        """Read the changes once per (cursor, filters) among the streams due, and queue their frames."""
        groups: dict[tuple[int, listing.JobQuery, bool], list[Opened]] = {}
        self._more = False
        for opened in self._open:
            if opened.due:
                opened.due = False
                groups.setdefault((opened.cursor, opened.query, opened.until_final), []).append(opened)
        for (cursor, query, until_final), members in groups.items():
            try:
                changes = self._read(cursor, query)
            except StoreUnavailable as exc:
                log.warning("streams: cannot read the changes (%s); ending %d streams", exc, len(members))
                for opened in members:
                    self._end(selector, opened, finished=False)
                continue
            frames, final, more = self._frames(changes, until_final)
            for opened in members:
                opened.cursor = changes.position
                if frames:
                    self._send(selector, opened, b"".join(_framed(frame, opened.chunked) for frame in frames))
                if opened.until_final and final:
                    self._end(selector, opened, finished=True)
                elif more:
                    opened.due = self._more = True

    def _housekeeping(self, selector: selectors.BaseSelector, now: float) -> None:
        for opened in list(self._open):
            if opened.ended():
                self._end(selector, opened, finished=True)
            elif opened.unsent and opened.stalled_since is not None and now - opened.stalled_since >= STALL_S:
                log.info("streams: dropping a client that has read nothing for %.0f s", STALL_S)
                self._end(selector, opened, finished=False)
            elif now - opened.quiet_since >= self._keep_alive_s:
                self._send(selector, opened, _framed(self._keep_alive, opened.chunked))

    def _send(self, selector: selectors.BaseSelector, opened: Opened, data: bytes) -> None:
        if opened.closed:
            return
        opened.quiet_since = self._clock()
        opened.unsent += data
        if len(opened.unsent) > MAX_UNSENT:
            log.info("streams: dropping a client with %d bytes unread", len(opened.unsent))
            self._end(selector, opened, finished=False)
            return
        self._flush(selector, opened)

    def _flush(self, selector: selectors.BaseSelector, opened: Opened) -> None:
        try:
            sent = opened.sock.send(opened.unsent)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._end(selector, opened, finished=False)
            return
        del opened.unsent[:sent]
        if opened.unsent:
            if opened.stalled_since is None or sent:
                opened.stalled_since = self._clock()
            selector.modify(opened.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, opened)
        elif opened.stalled_since is not None:
            opened.stalled_since = None
            selector.modify(opened.sock, selectors.EVENT_READ, opened)

    def _heard(self, selector: selectors.BaseSelector, opened: Opened) -> None:
        """The client sent something: its end (EOF, reset), or bytes a stream has no use for."""
        try:
            data = opened.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._end(selector, opened, finished=False)

    def _end(self, selector: selectors.BaseSelector, opened: Opened, finished: bool) -> None:
        """End a stream: if ``finished``, its last bytes sent as far as the socket takes them
        without waiting (and the empty chunk), then the connection closed."""
        if opened.closed:
            return
        opened.closed = True
        self._open.discard(opened)
        with contextlib.suppress(KeyError, ValueError, OSError):
            selector.unregister(opened.sock)
        try:
            if finished:
                with contextlib.suppress(OSError):
                    opened.sock.send(bytes(opened.unsent) + (b"0\r\n\r\n" if opened.chunked else b""))
                with contextlib.suppress(OSError):
                    opened.sock.shutdown(socket.SHUT_WR)
            opened.sock.close()
        finally:
            opened.release.close()


def _framed(frame: bytes, chunked: bool) -> bytes:
    return b"%X\r\n%s\r\n" % (len(frame), frame) if chunked else frame
