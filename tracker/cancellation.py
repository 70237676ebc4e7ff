"""The worker library's ear for cancel messages (SPEC §12): one connection and thread per Publisher.

While at least one ``publisher.job(...)`` block is open, a ``CancelListener`` keeps a connection of
its own (pika's are not thread-safe, and the block's publishing must never wait on it) with one
exclusive, server-named queue bound to the control exchange by ``cancel.<job_id>``, one binding
per open block's job: bound when the block opens, unbound when it ends. When the last block ends,
the connection is closed and the thread ends; the next block starts them again. So a worker
process with many blocks open at once (threads) shares one connection and one queue.

A lost connection is opened again with the one back-off, the queue declared anew and every open
job bound again. A cancel message sent meanwhile is lost with the old queue, but not the
cancellation: the tracker repeats the message every reap interval while the job stays PENDING.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from pika.adapters.blocking_connection import BlockingChannel

from tracker import broker, cancels
from tracker.config import Settings

log = logging.getLogger(__name__)

OnCancel = Callable[[cancels.CancelNotice], None]
_POLL_S = 0.05  # how long the thread waits for the broker before it looks at new or ended blocks


class CancelListener:
    """Calls each open block's ``on_cancel`` with the cancel messages of its job. Thread-safe."""

    def __init__(self, settings: Settings, name: str = "tracker-cancel-listener", bind_timeout_s: float = 5.0) -> None:
        self._settings = settings
        self._name = name
        self._bind_timeout_s = bind_timeout_s
        self._changed = threading.Condition()
        self._watchers: dict[int, list[OnCancel]] = collections.defaultdict(list)
        self._bound: frozenset[int] = frozenset()  # the jobs bound on the current queue
        self._thread: threading.Thread | None = None
        self.sessions = 0  # connections made so far (tests watch reconnects)
        self.heard = 0  # cancel messages received on its queue, of any job bound to it

    def watch(self, job_id: int, on_cancel: OnCancel) -> bool:
        """Call ``on_cancel`` (on the listener's thread) with each cancel message of ``job_id``
        until ``unwatch``. Waits until the job is bound, ``bind_timeout_s`` at most (the broker
        away: the block goes on, and the binding is made once it is back); whether it is."""
        with self._changed:
            self._watchers[job_id].append(on_cancel)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            bound = self._changed.wait_for(lambda: job_id in self._bound, self._bind_timeout_s)
        if not bound:
            log.warning("job %d: not yet listening for its cancellation (RabbitMQ unreachable); going on", job_id)
        return bound

    def unwatch(self, job_id: int, on_cancel: OnCancel) -> None:
        """Stop calling ``on_cancel`` for ``job_id``; its binding goes soon after its last watcher."""
        with self._changed:
            watchers = self._watchers.get(job_id, [])
            with contextlib.suppress(ValueError):
                watchers.remove(on_cancel)
            if not watchers:
                self._watchers.pop(job_id, None)

    def listening(self) -> frozenset[int]:
        """The jobs whose cancel messages are heard now."""
        with self._changed:
            return self._bound

    def _run(self) -> None:
        """The thread: a session while any block is open, again after a lost connection (backing off)."""
        delay = broker.ReconnectDelay()
        while True:
            with self._changed:
                if not self._watchers:
                    self._thread = None
                    return
            started = time.monotonic()
            try:
                self._session()
                continue  # ended because no block is open: look again, under the lock
            except broker.ERRORS as exc:
                log.warning("cancel listener: lost RabbitMQ (%s: %s); connecting again", type(exc).__name__, exc)
            except Exception:
                log.exception("cancel listener failed; starting again")
            finally:
                with self._changed:
                    self._bound = frozenset()
            time.sleep(delay.after(time.monotonic() - started))

    def _session(self) -> None:
        """One connection: declare, bind what is open, and hear, until no block is open."""
        connection = broker.Connector(self._settings.amqp_url, self._name).connect()
        self.sessions += 1
        try:
            channel = connection.channel()
            broker.declare_control_exchange(channel, self._settings)
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.basic_consume(queue, self._heard, auto_ack=True)
            bound: set[int] = set()
            while True:
                with self._changed:
                    wanted = set(self._watchers)
                if not wanted:
                    return
                self._bind(channel, queue, wanted, bound)
                connection.process_data_events(time_limit=_POLL_S)
        finally:
            with contextlib.suppress(*broker.ERRORS):
                connection.close()

    def _bind(self, channel: BlockingChannel, queue: str, wanted: set[int], bound: set[int]) -> None:
        if wanted == bound:
            return
        exchange = self._settings.control_exchange
        for job_id in wanted - bound:
            channel.queue_bind(queue, exchange, routing_key=cancels.routing_key(job_id))
            bound.add(job_id)
        for job_id in bound - wanted:
            channel.queue_unbind(queue, exchange, routing_key=cancels.routing_key(job_id))
            bound.discard(job_id)
        with self._changed:
            self._bound = frozenset(bound)
            self._changed.notify_all()

    def _heard(self, _channel: BlockingChannel, _method: object, _properties: object, body: bytes) -> None:
        """Runs inside process_data_events for each message: tell the job's blocks."""
        self.heard += 1
        notice = cancels.parse_control(body)
        if notice is None:
            return
        with self._changed:
            watchers = list(self._watchers.get(notice.job_id, ()))
        for on_cancel in watchers:
            try:
                on_cancel(notice)
            except Exception:
                log.exception("job %d: a cancel callback failed", notice.job_id)
