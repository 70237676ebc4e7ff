"""The ``tracker`` command, and the one place that wires processes together.

Each command builds what it needs from ``Settings`` and hands it over: ``tracker api`` to
``api.server``, ``tracker consume`` to ``consumers.amqp``. The rest of ``tracker`` never imports
``api`` or ``consumers`` (an import-linter contract holds it). The server's libraries (the
``server`` extra) load only for the commands that use them, so the worker's commands (``jobs
create``, ``jobs emit``) run on a worker install, and the others there say what is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tracker import logs, roles
from tracker.cli import cancel_command
from tracker.cli.emitting import add_detail_options, detail_fields
from tracker.config import Settings
from tracker.errors import (
    ConfigError,
    InvalidEvent,
    InvalidUser,
    StoreBroken,
    StoreUnavailable,
    UsageError,
    UserExists,
)
from tracker.events import CANCEL_REQUESTED, TERMINAL_TYPES
from tracker.leases import MAX_TIMEOUT_S
from tracker.outages import OutageLog

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tracker.client import ApiClient

log = logging.getLogger("tracker")


# What a command refuses as the user's mistake (printed, exit 2). Anything else is a bug and
# keeps its traceback.
_USER_ERRORS = (UsageError, ConfigError, InvalidUser, UserExists, InvalidEvent)

# The top-level modules of the ``server`` extra: a command that needs one on a worker install
# (``pip install async-status-tracker``) says so instead of showing a traceback.
_SERVER_LIBRARIES = frozenset({"sqlalchemy", "alembic", "psycopg", "falcon", "gunicorn", "jwt", "argon2"})
_SERVER_EXTRA_HINT = "pip install 'async-status-tracker[server]'"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        logs.configure(os.environ.get("TRACKER_LOG_LEVEL", "INFO"), settings.log_format)
        # pika logs every connection attempt, and each failed one with a traceback; the consumer and
        # publisher log what they do about a lost connection themselves, once, in one line.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        handler: Callable[[Settings, argparse.Namespace], int] = args.handler  # set by _parser for each command
        return handler(settings, args)
    except _USER_ERRORS as exc:
        print(f"tracker: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        # One line, not a traceback: the database is away (or broken), which the user can act on.
        print(f"tracker: {_problem_of(exc)}: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if exc.name not in _SERVER_LIBRARIES:
            raise
        print(f"tracker {args.command} needs the server extra: {_SERVER_EXTRA_HINT}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for the database to answer (say, while it starts beside us); default: try once",
    )
    migrate.set_defaults(handler=_migrate)
    commands.add_parser("api", help="serve the HTTP API under gunicorn").set_defaults(handler=_api)
    commands.add_parser("consume", help="fold events from RabbitMQ into rows").set_defaults(handler=_consume)
    commands.add_parser("run", help="migrate, then run the API and a consumer").set_defaults(handler=_run)
    dead = commands.add_parser("dead", help="count dead-lettered messages by reason (they stay queued)")
    dead.add_argument("--limit", type=int, default=1000, help="read the reasons of at most this many")
    dead.set_defaults(handler=_dead)
    _dead_actions(dead)
    purge = commands.add_parser("purge", help="delete finished jobs older than DAYS, with their events")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS", help="days since they finished")
    purge.set_defaults(handler=_purge)

    users = commands.add_parser("users", help="manage API users").add_subparsers(dest="action", required=True)
    add = users.add_parser("add", help="add a user (password from TRACKER_PASSWORD or a prompt)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=sorted(roles.ROLES))
    add.set_defaults(handler=_users_add)
    users.add_parser("list", help="list users and roles").set_defaults(handler=_users_list)
    remove = users.add_parser("remove", help="delete a user; their tokens stop working within 60 s")
    remove.add_argument("name")
    remove.set_defaults(handler=_users_remove)

    jobs = commands.add_parser("jobs", help="create jobs and emit events").add_subparsers(dest="action", required=True)
    create = jobs.add_parser("create", help="create a job through the API and print its id")
    create.add_argument("message", nargs="?")
    create.add_argument(
        "--timeout", type=int, metavar="S", help="fail the job if still PENDING S seconds after it starts"
    )
    create.add_argument(
        "--heartbeat-timeout",
        type=int,
        metavar="S",
        help="fail the job if none of its events is received for S seconds",
    )
    create.add_argument("--kind", metavar="K", help="what kind of job it is, e.g. deliveryservice.regenerate")
    create.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label to find the job by, e.g. env=prod (repeatable, up to 16)",
    )
    create.add_argument(
        "--notify-url",
        metavar="URL",
        help="POST the job's row to URL, signed, once it has ended (the server must allow its origin)",
    )
    create.set_defaults(handler=_jobs_create)
    emit = jobs.add_parser("emit", help="publish an event for a job")
    emit.add_argument("id", type=int)
    emit.add_argument("type", choices=["progress", *sorted(TERMINAL_TYPES), CANCEL_REQUESTED])
    emit.add_argument("message", nargs="?")
    add_detail_options(emit)
    emit.set_defaults(handler=_jobs_emit)
    cancel_command.add_parser(jobs)
    return parser


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[Engine]:
    """An engine on the configured database for one command, disposed of when it is done."""
    from tracker.store import make_engine

    engine = make_engine(settings.database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.cli.dead_queue_move import migrate_dead_queue
    from tracker.store import migrate
    from tracker.store.migrations import wait_until_answering

    wait_s: float = getattr(args, "wait", 0.0)  # tracker run migrates too, without the option
    if wait_s < 0:
        raise UsageError("--wait must be at least 0")
    with _database(settings) as engine:
        wait_until_answering(engine, wait_s)
        migrate(engine)
    log.info("database is at the newest schema")
    return migrate_dead_queue(settings)


def _first_admin(settings: Settings, *, later: bool = False) -> None:
    """With no users at all, create ``admin`` and print its password once (never logged).

    ``later``: a database that does not answer yet (or has no schema yet) is no error; it is said
    once, and the admin is made from a thread as soon as it answers, while the caller goes on
    (``tracker api`` serves meanwhile, its /readyz 503). Without, raises StoreUnavailable.
    """
    try:
        _ensure_first_admin(settings)
    except StoreUnavailable as exc:
        if not later:
            raise
        outage = OutageLog(log, "database answers")
        outage.failed(
            _problem_of(exc),
            f"{exc}; serving anyway: /readyz answers 503 and requests that need it 503 until it answers "
            "(the first admin, if there are no users, is made then)",
        )
        waiting = threading.Thread(
            target=_first_admin_later, args=(settings, outage), name="tracker-first-admin", daemon=True
        )
        waiting.start()


def _first_admin_later(settings: Settings, outage: OutageLog) -> None:
    """Runs on a thread of ``tracker api``'s master until the first admin is settled: retry, with back-off."""
    from tracker.backoff import Backoff

    backoff = Backoff(first=1.0, cap=15.0)
    while True:
        time.sleep(backoff.next())
        try:
            _ensure_first_admin(settings)
        except StoreUnavailable as exc:
            outage.failed(_problem_of(exc), f"{exc}; serving anyway, /readyz 503 until it answers")
            continue
        outage.recovered()
        return


def _problem_of(exc: StoreUnavailable) -> str:
    if isinstance(exc, StoreBroken):
        return "database not usable yet (its schema or grants: tracker migrate?)"
    return "database unavailable"


def _ensure_first_admin(settings: Settings) -> None:
    from tracker.users import UserStore

    with _database(settings) as engine:
        password = UserStore(engine).ensure_first_admin()
    if password is not None:
        # Shown once, on the terminal only: never through logging.
        print(
            f"\nNo users yet: created user 'admin' with password {password}\n"
            "It is shown only this once. Add others with: tracker users add NAME --role ROLE\n",
            file=sys.stderr,
            flush=True,
        )


def _api(settings: Settings, _args: argparse.Namespace) -> int:
    from api.server import serve  # the API's dependencies load only for this command

    # Started before its database (compose, Kubernetes): it serves at once, /healthz 200 and
    # /readyz 503, and starts answering from the database when it comes.
    _first_admin(settings, later=True)
    serve(settings)
    return 0


def _consume(settings: Settings, _args: argparse.Namespace) -> int:
    from consumers.amqp import consume

    return consume(settings)


def _dead(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.cli.deadletters import count, shown
    from tracker.errors import DeadLettersUnavailable
    from tracker.reasons import reason_code

    if args.limit < 0:
        raise UsageError("--limit must be at least 0")
    try:
        found = count(settings, args.limit)
    except DeadLettersUnavailable as exc:
        print(f"tracker: {exc}", file=sys.stderr)
        return 1
    print(f"{found.queue}: {found.total} dead-lettered messages")
    if found.examined:
        which = "all" if found.examined == found.total else f"the first {found.examined}"
        print(f"reasons ({which}):")
        for reason, times in found.reasons:
            print(shown(f"{times:8d}  {reason_code(reason):<21}  {reason}"))
    return 0


def _dead_actions(dead: argparse.ArgumentParser) -> None:
    """``tracker dead show|replay|drop``: see tracker.cli.deadletters."""
    from tracker.reasons import CODES

    actions = dead.add_subparsers(dest="action", metavar="{show,replay,drop}")
    reason_help = f"only those with this reason: a short code ({', '.join(CODES)}) or one exact reason text"
    for name, text, default_limit in (
        ("show", "print dead letters (reason, routing key, the body's start); they stay queued", 20),
        ("replay", "re-publish dead letters to the events exchange, each removed once confirmed", None),
        ("drop", "delete dead letters", None),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--reason", help=reason_help)
        every = "at most this many" + (f" (default {default_limit})" if default_limit else " (default: all)")
        action.add_argument("--limit", type=int, default=default_limit, help=every)
        if name != "show":
            action.add_argument("-v", "--verbose", action="store_true", help="print a line for each one")
        action.set_defaults(handler=_dead_action)


def _dead_action(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.cli import deadletters
    from tracker.errors import DeadLettersUnavailable
    from tracker.reasons import ReasonFilter

    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must be at least 0")
    try:
        reason = ReasonFilter(args.reason)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    done_word = {"show": "shown", "replay": "replayed", "drop": "dropped"}[args.action]
    so_far = 0

    def each(letter: deadletters.DeadLetter) -> None:
        nonlocal so_far
        so_far += 1
        # flush: someone may be watching a long replay's progress (or killing it part-way).
        if args.action == "show":
            print(deadletters.describe(letter), flush=True)
        elif args.verbose:
            line = f"{done_word} {letter.message_id} {letter.routing_key} {letter.code}: {letter.reason}"
            print(deadletters.shown(line), flush=True)

    run = {"show": deadletters.show, "replay": deadletters.replay, "drop": deadletters.drop}[args.action]
    try:
        done = run(settings, reason, args.limit, each)
    except DeadLettersUnavailable as exc:
        print(f"tracker: {exc} ({done_word} {so_far} before that)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Whatever was taken and not finished went back to the queue with the connection.
        print(f"tracker: interrupted; {done_word} {so_far}", file=sys.stderr)
        return 130
    summary = f"{done_word} {done.handled} ({reason}) of {done.total} in {done.queue}"
    after = {"show": "; they stay there", "replay": f", to exchange {settings.exchange}", "drop": ""}[args.action]
    print(summary + after)
    return 0


def _purge(settings: Settings, args: argparse.Namespace) -> int:
    """Delete finished jobs older than ``--older-than`` days, in small transactions; print how many."""
    from tracker import leases, timefmt
    from tracker.store.leases import purge

    try:
        cutoff = leases.purge_cutoff(timefmt.now(), args.older_than)
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None
    with _database(settings) as engine:
        deleted = purge(engine, cutoff)
    print(f"purged {deleted} jobs finished before {timefmt.format_time(cutoff)}")
    return 0


def _run(settings: Settings, args: argparse.Namespace) -> int:
    """Migrate, then supervise ``tracker api`` and ``tracker consume`` as child processes.

    SIGTERM/SIGINT is passed on to both; if either stops, the other is stopped too.
    """
    _migrate(settings, args)
    _first_admin(settings)
    command = [sys.executable, "-m", "tracker.cli"]
    children = [subprocess.Popen([*command, "api"]), subprocess.Popen([*command, "consume"])]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    if not stopping:
        log.error("a child process stopped; stopping the others")
        forward(signal.SIGTERM, None)
    codes = [child.wait() for child in children]
    return 0 if stopping and all(code in (0, -signal.SIGTERM, -signal.SIGINT) for code in codes) else 1


def _users_add(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.users import UserStore

    password = os.environ.get("TRACKER_PASSWORD") or _prompt_new_password()
    with _database(settings) as engine:
        UserStore(engine).add(args.name, args.role, password)
    print(f"added {args.name} ({args.role})")
    return 0


def _prompt_new_password() -> str:
    if not sys.stdin.isatty():
        raise UsageError("set TRACKER_PASSWORD, or run in a terminal to be asked for the password")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise UsageError("the passwords differ")
    return first


def _users_list(settings: Settings, _args: argparse.Namespace) -> int:
    from tracker.users import UserStore

    with _database(settings) as engine:
        for user in UserStore(engine).list():
            print(f"{user.username}\t{user.role}\t{user.created_at.isoformat()}")
    return 0


def _users_remove(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.users import UserStore

    with _database(settings) as engine:
        removed = UserStore(engine).remove(args.name)
    if not removed:
        print(f"tracker: no user {args.name!r}", file=sys.stderr)
        return 1
    print(f"removed {args.name}")
    return 0


def api_client(settings: Settings) -> ApiClient:
    """A client of the API at TRACKER_API_URL (else TRACKER_BIND) with TRACKER_API_TOKEN, or
    TRACKER_API_USER and TRACKER_PASSWORD (asked for on a terminal); raises UsageError."""
    from tracker.client import ApiClient

    token = os.environ.get("TRACKER_API_TOKEN")
    username = os.environ.get("TRACKER_API_USER")
    password = os.environ.get("TRACKER_PASSWORD")
    if token is None and username and not password and sys.stdin.isatty():
        password = getpass.getpass(f"Password for {username}: ")
    if token is None and not (username and password):
        raise UsageError("set TRACKER_API_TOKEN, or TRACKER_API_USER and TRACKER_PASSWORD")
    url = os.environ.get("TRACKER_API_URL") or f"http://{settings.bind}"
    return ApiClient(url, token=token, username=username, password=password)


def _jobs_create(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.errors import ApiError

    client = api_client(settings)
    from tracker.leases import check_timeout

    limits = {}
    for option, field in (("timeout", "timeout_s"), ("heartbeat_timeout", "heartbeat_timeout_s")):
        value = getattr(args, option)
        if value is not None:
            try:
                limits[field] = check_timeout(field, value)
            except ValueError:
                flag = "--" + option.replace("_", "-")
                raise UsageError(f"{flag} must be an integer from 1 to {MAX_TIMEOUT_S}") from None
    kind, labels = _kind_and_labels(args.kind, args.label)
    options: dict[str, Any] = dict(limits)
    if args.notify_url is not None:
        options["notify_url"] = _notify_url(args.notify_url)
    try:
        print(client.create_job(args.message, kind=kind, labels=labels, **options))
    except (ApiError, OSError) as exc:
        print(f"tracker: could not create the job: {exc}", file=sys.stderr)
        return 1
    return 0


def _kind_and_labels(kind: str | None, assignments: list[str]) -> tuple[str | None, dict[str, str]]:
    """``--kind`` and the ``--label KEY=VALUE`` options as the API takes them (SPEC §11), checked
    as it checks them; raises UsageError naming the option."""
    from tracker.labels import MAX_LABELS, check_kind, check_labels

    labels: dict[str, str] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise UsageError(f"--label takes KEY=VALUE, not {assignment!r}")
        if key in labels:
            raise UsageError(f"--label {key} is given more than once")
        labels[key] = value
    if len(labels) > MAX_LABELS:
        raise UsageError(f"--label may be given at most {MAX_LABELS} times, not {len(labels)}")
    if kind is not None:
        try:
            check_kind(kind)
        except ValueError as exc:
            raise UsageError("--kind" + str(exc).removeprefix("kind")) from None
    try:
        check_labels(labels)
    except ValueError as exc:  # "labels key 'Env' must be …"
        raise UsageError("--label" + str(exc).removeprefix("labels")) from None
    return kind, labels


def _notify_url(url: str) -> str:
    """``--notify-url`` as the API takes it (SPEC §13), but for the server's allow-list, which only
    the server knows; raises UsageError naming the option."""
    from tracker.webhooks import parse_url

    try:
        parse_url(url)
    except ValueError as exc:  # "notify_url must be …"
        raise UsageError("--notify-url" + str(exc).removeprefix("notify_url")) from None
    return url


def _jobs_emit(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.errors import PublishFailed
    from tracker.publisher import Publisher

    details = detail_fields(args)
    with Publisher(settings, timeout_s=15) as publisher:
        try:
            event = publisher.emit(args.id, args.type, args.message, **details)
        except PublishFailed as exc:
            print(f"tracker: {exc}", file=sys.stderr)
            return 1
    print(event.event_id)
    return 0
