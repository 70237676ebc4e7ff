"""Streams of row changes (SPEC §13): ``Accept: text/event-stream`` on the list and on GET by id.

A stream sends ``event: job`` / ``id: <cursor>`` / ``data: <the row>`` for each change of a
matching row, in commit order (``tracker.store.cursor``), the row as GET renders it; a client that
comes back with ``Last-Event-ID`` gets every matching row changed since, as it is now; a cursor that
cannot be resumed gets ``event: reset`` (its ``id`` the cursor to go on from: reload, then go on);
a comment every 15 s keeps it open. It reads no more than it sends: each time the cache's listener
(PostgreSQL) or this module's ringer (SQLite's commit counter) says something changed, it reads the
rows changed since its cursor, through the index of cursors. docs/streams.md says more.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import falcon
import orjson

from api.pump import Opened, Pump, stream_cap
from api.reads import JobReads, retried_after_disconnect
from api.revocations import RevokedTokens
from api.waits import ProcessThread, WaitCounts, WaitRegistry, client_gone_check
from tracker import listing
from tracker.auth import Claims
from tracker.errors import StoreUnavailable
from tracker.merge import PENDING
from tracker.model import Job
from tracker.rendering import job_view
from tracker.store.cursor import Changes

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
KEEP_ALIVE_S = 15.0
ROWS_PER_READ = 500
_CHECK_S = 1.0  # how often a stream looks whether its client has gone, or the API stops
_UNNOTIFIED_S = 0.05  # how often a stream reads while nothing tells it of changes
_RING_S = 0.01  # how often SQLite's commit counter is read while streams are open
KEEP_ALIVE = b": keep-alive\n\n"
TOO_MANY = "too many requests are held open; try again later"
_HandOff = Callable[[int, listing.JobQuery, bool], None]
_T = TypeVar("_T")


def wants_event_stream(accept: str | None) -> bool:
    """Whether an ``Accept`` header names ``text/event-stream`` itself (with q above 0); a wildcard
    such as ``*/*`` does not ask for a stream."""
    for element in (accept or "").split(","):
        media, *parameters = (part.strip() for part in element.split(";"))
        if media.lower() != MEDIA_TYPE:
            continue
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q" and value.strip() in {"0", "0.", "0.0", "0.00", "0.000"}:
                break
        else:
            return True
    return False


def last_event_id(header: str | None) -> int | None:
    """The cursor a reconnecting client gives (``Last-Event-ID``), or None without one. A value
    that is no cursor of ours is -1, which no stream can resume from (it gets a reset)."""
    if header is None or not header.strip():
        return None
    text = header.strip()
    if text.isascii() and text.isdigit() and len(text) <= 19:
        return int(text)
    return -1


def job_frame(cursor: int, job: Job) -> bytes:
    """One change: the row as GET by id renders it (its ``response``), on one line (compact JSON
    escapes every line break)."""
    return b"event: job\nid: %d\ndata: %s\n\n" % (cursor, orjson.dumps(job_view(job)))


def reset_frame(cursor: int) -> bytes:
    """The cursor given cannot be resumed: reload, then go on from ``cursor``."""
    return b'event: reset\nid: %d\ndata: {"reload":true}\n\n' % cursor


def position_frame(cursor: int) -> bytes:
    """No event, only the cursor (an ``id`` with no data sets the client's last event id and
    dispatches nothing): a client that reconnects before any change resumes from here."""
    return b"id: %d\n\n" % cursor


class Streams:
    """The streams of one API process: read through ``reads``'s store, woken by its wait registry's
    notifications (the cache's listener on PostgreSQL, this class's ringer on SQLite), ended at
    shutdown with it."""

    def __init__(
        self,
        reads: JobReads,
        revoked: RevokedTokens | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_streams: int = 4096,
    ) -> None:
        self._reads = reads
        self._waits = reads.waits
        self._revoked = revoked
        self._clock = clock
        self._wall_clock = wall_clock
        self._ringer = _Ringer(reads)
        # Streams have their own cap (a stream holds a socket, not a thread, once the pump has it).
        self._held = WaitRegistry(stream_cap(max_streams))
        self.pump = Pump(
            read=self._read_changes,
            frames=_render,
            notified=lambda: self._reads.notified or self._ringer.ringing,
            stopping=lambda: self._waits.stopping,
            keep_alive=KEEP_ALIVE,
            keep_alive_s=KEEP_ALIVE_S,
            unnotified_s=_UNNOTIFIED_S,
            clock=clock,
        )
        self._waits.ring_on_change(self.pump.ring)

    def _read_changes(self, cursor: int, query: listing.JobQuery) -> Changes:
        return self._read(functools.partial(self._reads.store.changed_since, cursor, query, ROWS_PER_READ))

    def _ended_check(self, req: falcon.Request) -> Callable[[], bool]:
        """Whether a stream of ``req`` is to end: its client has gone, or its credentials have
        expired or been ended by a logout (the stream is authorised when it opens, and goes on
        only while its token would still be taken)."""
        gone = client_gone_check(req.env)
        session_ended = self._session_ended_check(req)

        def ended() -> bool:
            return (gone is not None and gone()) or session_ended()

        return ended

    def _session_ended_check(self, req: falcon.Request) -> Callable[[], bool]:
        claims: Claims | None = getattr(req.context, "claims", None)

        def ended() -> bool:
            if claims is None:
                return False
            if self._wall_clock() >= claims.expires_at:
                return True
            try:
                return self._revoked is not None and self._revoked.is_revoked(claims.token_id)
            except StoreUnavailable:
                return True  # cannot tell: the client comes back, and is asked again

        return ended

    def answer_list(self, req: falcon.Request, resp: falcon.Response, query: listing.JobQuery) -> None:
        """Answer ``req`` with the list's stream (``list_stream``)."""
        resume_from = last_event_id(req.get_header("Last-Event-ID"))
        ended = self._ended_check(req)
        self._answer(req, resp, lambda hand_off: self.list_stream(query, resume_from, ended, hand_off))

    def answer_job(self, req: falcon.Request, resp: falcon.Response, job: Job) -> None:
        """Answer ``req`` with one job's stream (``job_stream``)."""
        resume_from = last_event_id(req.get_header("Last-Event-ID"))
        ended = self._ended_check(req)
        self._answer(req, resp, lambda hand_off: self.job_stream(job, resume_from, ended, hand_off))

    def _answer(
        self, req: falcon.Request, resp: falcon.Response, open_frames: Callable[[_HandOff | None], Iterator[bytes]]
    ) -> None:
        release = contextlib.ExitStack()
        if not release.enter_context(self._held.admitted(req.context.user.username)):
            release.close()
            raise falcon.HTTPServiceUnavailable(description=TOO_MANY, headers={"Retry-After": "5"})
        try:
            frames = open_frames(self._hand_off_for(req, release))
        except BaseException:
            release.close()
            raise
        resp.content_type = MEDIA_TYPE
        resp.set_header("X-Accel-Buffering", "no")  # a proxy in front passes each event on at once
        resp.stream = Held(frames, release)

    def _hand_off_for(self, req: falcon.Request, release: contextlib.ExitStack) -> _HandOff | None:
        """How a stream of ``req`` goes to the pump once its first frames are written, or None when
        the server cannot give its socket away (then the stream holds a thread to its end)."""
        take = getattr(req.env.get("gunicorn.socket"), "hand_off", None)
        if take is None or req.method != "GET":
            return None
        chunked = req.env.get("SERVER_PROTOCOL") != "HTTP/1.0"  # as gunicorn frames the body
        ended = self._session_ended_check(req)

        def hand_off(cursor: int, query: listing.JobQuery, until_final: bool) -> None:
            self.pump.adopt(Opened(take(), query, cursor, until_final, chunked, ended, release.pop_all()))

        return hand_off

    def count_in(self, counts: WaitCounts) -> None:
        """Report the streams opened, ended and refused to ``counts`` (set once, before the first)."""
        self._held.count_in(counts)

    @property
    def held(self) -> int:
        """How many streams this process holds now."""
        return self._held.held

    def list_stream(
        self,
        query: listing.JobQuery,
        resume_from: int | None,
        gone: Callable[[], bool] | None,
        hand_off: _HandOff | None = None,
    ) -> Iterator[bytes]:
        """The stream of the list's rows matching ``query``'s filters. Reads the first changes
        (or the position) now, so that an unavailable database is an error before any byte is
        sent; raises StoreUnavailable."""
        self._reads.listen()
        self._ringer.start()
        if resume_from is None:
            start = self._read(lambda: self._reads.store.stream_position())
            return self._follow(query, start, position_frame(start), gone, hand_off)
        return self._follow(query, resume_from, b"", gone, hand_off)

    def job_stream(
        self,
        job: Job,
        resume_from: int | None,
        gone: Callable[[], bool] | None,
        hand_off: _HandOff | None = None,
    ) -> Iterator[bytes]:
        """The stream of one job, read as ``job`` (it exists): its row now, unless the client
        resumes from a cursor after which it has not changed, then each change, ending after its
        final state. Raises StoreUnavailable."""
        self._reads.listen()
        self._ringer.start()
        query = listing.JobQuery(id_above=job.id - 1, id_below=job.id + 1)
        position = self._read(lambda: self._reads.store.stream_position())
        if resume_from is not None:
            changes = self._read(lambda: self._reads.store.changed_since(resume_from, query, 1))
            if not changes.reset and not changes.rows:
                return self._follow(query, resume_from, b"", gone, hand_off, until_final=True)
        # The row read after the position: a change between the two is sent again, never missed.
        now = self._read(lambda: self._reads.store.get_job(job.id))
        first = job_frame(position, now)
        if now.status != PENDING:
            return iter((first,))
        return self._follow(query, position, first, gone, hand_off, until_final=True)

    def _follow(
        self,
        query: listing.JobQuery,
        cursor: int,
        first: bytes,
        gone: Callable[[], bool] | None,
        hand_off: _HandOff | None,
        until_final: bool = False,
    ) -> Iterator[bytes]:
        generation = self._waits.generation
        changes = self._read(lambda: self._reads.store.changed_since(cursor, query, ROWS_PER_READ))
        return self._frames(query, changes, cursor, generation, first, gone, until_final, hand_off)

    def _frames(
        self,
        query: listing.JobQuery,
        changes: Changes,
        cursor: int,
        generation: int,
        first: bytes,
        gone: Callable[[], bool] | None,
        until_final: bool,
        hand_off: _HandOff | None = None,
    ) -> Iterator[bytes]:
        if first:
            yield first
        written = bool(first)
        quiet_since = self._clock()
        while True:
            if changes.reset:
                yield reset_frame(changes.position)
                written = True
                quiet_since = self._clock()
            for position, job in changes.rows:
                yield job_frame(position, job)
                written = True
                quiet_since = self._clock()
                if until_final and job.status != PENDING:
                    return
            cursor = changes.position
            if len(changes.rows) < ROWS_PER_READ and hand_off is not None:
                if not written:
                    yield b""  # the headers go out (an empty write sends nothing else)
                # What was yielded has been written: from here the pump writes, from ``cursor``
                # (it reads at once, so a change since the read above is not missed).
                hand_off(cursor, query, until_final)
                return
            if len(changes.rows) < ROWS_PER_READ:
                while True:
                    notified = self._reads.notified or self._ringer.ringing
                    keep_alive_in = quiet_since + KEEP_ALIVE_S - self._clock()
                    if keep_alive_in <= 0:
                        yield KEEP_ALIVE
                        quiet_since = self._clock()
                        continue
                    timeout = min(keep_alive_in, _CHECK_S if notified else _UNNOTIFIED_S)
                    if self._waits.changed_after(generation, timeout):
                        break
                    if self._waits.stopping or (gone is not None and gone()):
                        return
                    if not notified:
                        break
            generation = self._waits.generation
            try:
                changes = self._read(functools.partial(self._reads.store.changed_since, cursor, query, ROWS_PER_READ))
            except StoreUnavailable as exc:
                # The client comes back with its Last-Event-ID, and misses nothing.
                log.warning("streams: cannot read the changes (%s); ending the stream", exc)
                return

    def _read(self, read: Callable[[], _T]) -> _T:
        return retried_after_disconnect(read)

    def close(self) -> None:
        self._ringer.close()


def _render(changes: Changes, until_final: bool) -> tuple[list[bytes], bool, bool]:
    """The pump's frames for ``changes``: the frames, whether a final state ends a job's stream
    (``until_final``), whether more rows wait to be read."""
    frames = [reset_frame(changes.position)] if changes.reset else []
    for position, job in changes.rows:
        frames.append(job_frame(position, job))
        if until_final and job.status != PENDING:
            return frames, True, False
    return frames, False, len(changes.rows) >= ROWS_PER_READ


class Held:
    """A stream's frames as the WSGI server iterates them, counted against the streams' cap until
    the server closes it, started or not, or the pump has taken it (then until the pump ends it)."""

    def __init__(self, frames: Iterator[bytes], release: contextlib.ExitStack) -> None:
        self._frames = frames
        self._release = release

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._frames)

    def close(self) -> None:
        try:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
        finally:
            self._release.close()


class _Ringer:
    """SQLite's: one thread per process that reads the database's commit counter while streams
    are open and tells the wait registry when it moves (PostgreSQL's notifications do that there)."""

    def __init__(self, reads: JobReads) -> None:
        self._reads = reads
        self._thread = ProcessThread(self._run, "tracker-streams")
        self.ringing = False

    def start(self) -> None:
        """Start the thread in this process unless it runs already, or there is no counter to read."""
        self._thread.start(before=self._quiet)

    def _quiet(self) -> None:
        self.ringing = False

    def close(self) -> None:
        self._thread.stop()

    def _run(self, stopping: threading.Event) -> None:
        """Runs on the ringer's thread until close()."""
        counter = self._reads.store.change_counter()
        if counter is None:
            return
        seen: int | None = None
        while not stopping.is_set() and not self._reads.waits.stopping:
            try:
                value = counter()
            except StoreUnavailable as exc:
                self.ringing = False
                log.warning("streams: cannot read the commit counter (%s)", exc)
                stopping.wait(1.0)
                continue
            if value != seen:
                seen = value
                self._reads.waits.notify(())
            self.ringing = True
            stopping.wait(_RING_S)
        self.ringing = False
