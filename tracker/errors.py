"""Every error the tracker's parts raise to each other, in one place.

The tree (each class also derives from the builtin its callers already catch)::

    TrackerError
    ├── ConfigError(ValueError)            an environment variable the tracker cannot use
    ├── UsageError(ValueError)             a `tracker` command given something it cannot use
    ├── InvalidEvent(ValueError)           a message breaking the wire contract (SPEC §3); .reason
    ├── InvalidUser(ValueError)            a username or role that cannot be stored
    ├── UserExists(ValueError)             adding a user whose name is taken
    ├── JobNotFound(LookupError)           no row for the job id; .job_id
    ├── JobFinished                        cancelling a job that has ended; .job_id, .status
    ├── JobCancelled                       raised in a worker's job block once its cancel is heard (SPEC §12)
    ├── StoreUnavailable(RuntimeError)     the database is away; nothing was committed: retry
    │   └── StoreBroken                    it answers, but its schema or grants are not the code's: retry once repaired
    ├── StoreRefused                       the database refused the data; nothing committed; .error
    ├── Unauthenticated                    no, forged, expired or revoked credentials
    ├── PermissionDenied                   authenticated without the permission; .permission
    ├── RequestTimedOut                    an HTTP request not received within the read timeout
    ├── PublishFailed(RuntimeError)        the broker did not confirm an event in time
    ├── BrokerUnreachable(ConnectionError)  no node of TRACKER_AMQP_URL took a connection
    ├── ApiError(RuntimeError)             the HTTP API answered with an error; .status
    └── DeadLettersUnavailable(RuntimeError)  the dead-letter queue could not be read

Where they become answers: ``api/errors.py`` maps JobNotFound, JobFinished, StoreUnavailable, Unauthenticated,
PermissionDenied and RequestTimedOut to HTTP once; the consumer dead-letters InvalidEvent, retries
StoreUnavailable (StoreBroken too: no event can cure it, so it dead-letters none), and halves a
batch on StoreRefused until it can dead-letter the one event the database refuses; the
``tracker`` command prints the ValueErrors and exits 2. RequestTimedOut is no OSError, so that
gunicorn, which passes over socket errors quietly, lets it be answered (408).

Private to one module, never crossing a boundary: ``api.rowcache.NotNotified`` (the listener's
proof of the triggers failed), ``consumers.amqp.FatalBrokerError`` and ``ConsumerCancelled``
(the pika loop's reasons to stop or reconnect).

No I/O library is imported here: the worker library (publisher, client) uses this module too.
"""

from __future__ import annotations


class TrackerError(Exception):
    """The root of the tracker's own errors."""


class ConfigError(TrackerError, ValueError):
    """An environment variable holds a value the tracker cannot use."""


class UsageError(TrackerError, ValueError):
    """A ``tracker`` command was given something it cannot use; printed, exit status 2."""


class InvalidEvent(TrackerError, ValueError):
    """A message that breaks the wire contract; ``reason`` says how, for ``x-tracker-reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidUser(TrackerError, ValueError):
    """A username or role that cannot be stored."""


class UserExists(TrackerError, ValueError):
    """A user of that name already exists."""

    def __init__(self, username: str) -> None:
        super().__init__(f"user {username!r} already exists")


class JobNotFound(TrackerError, LookupError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


class JobFinished(TrackerError):
    """The job's cancellation was asked for, but it has already ended: SUCCEEDED or FAILED."""

    def __init__(self, job_id: int, status: str) -> None:
        super().__init__(f"job {job_id} has already finished: {status}")
        self.job_id = job_id
        self.status = status


class JobCancelled(TrackerError):
    """The job's cancellation was asked for (``JobReport.check_cancelled`` raises it); leaving a
    ``publisher.job`` block with it fails the job with ``error.code`` ``cancelled``, quietly."""


class StoreUnavailable(TrackerError, RuntimeError):
    """The database could not be reached or dropped the transaction; nothing was committed."""


class StoreBroken(StoreUnavailable):
    """The database answers, but cannot do the work as this code needs: a table, column or function
    missing, a privilege refused, a statement it cannot run. Nothing was committed.

    Not bad input (no event can cure it) and not an outage that passes by itself: it lasts until
    someone repairs the schema or the grants. Whoever retries StoreUnavailable retries this too.
    """


class StoreRefused(TrackerError):
    """The database refused data it was given (a constraint, a value it cannot store); nothing was committed.

    Only for errors about the data itself (``tracker.store.engine.classify``). Not an outage: the
    same data would be refused again. ``error`` names the database's error
    (``CheckViolation``, ``UntranslatableCharacter``); the driver's exception is the ``__cause__``.
    """

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(f"{error}: {detail}" if detail else error)
        self.error = error


class Unauthenticated(TrackerError):
    """No credentials, or ones that are forged, tampered with, expired or of a deleted user."""


class PermissionDenied(TrackerError):
    """Authenticated, but without ``permission``."""

    def __init__(self, permission: str) -> None:
        super().__init__(permission)
        self.permission = permission


class RequestTimedOut(TrackerError):
    """The client did not send its whole request (line, headers, body) within the read timeout."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the request was not received within {timeout_s:g} seconds")
        self.timeout_s = timeout_s


class PublishFailed(TrackerError, RuntimeError):
    """The broker did not confirm the event before the timeout."""


class BrokerUnreachable(TrackerError, ConnectionError):
    """No node of TRACKER_AMQP_URL took a connection; the text says what each one answered.

    Whoever retries a lost broker connection (pika's AMQPConnectionError) retries this as well:
    ``tracker.broker.CONNECTION_ERRORS`` holds both.
    """


class ApiError(TrackerError, RuntimeError):
    """The API answered with an error; ``status`` is the HTTP status, the text its alert."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


class DeadLettersUnavailable(TrackerError, RuntimeError):
    """RabbitMQ could not be reached or refused to let us look at the queue."""
