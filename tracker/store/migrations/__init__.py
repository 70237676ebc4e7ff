"""The schema's Alembic migrations (``versions/``), ``migrate``, which applies them, the wait for a
database that is starting (``wait_until_answering``), and the check that a database holds the newest
(``schema_problem``, for readiness)."""

from __future__ import annotations

import functools
import logging
import pathlib
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tracker.backoff import Backoff
from tracker.errors import StoreUnavailable
from tracker.outages import OutageLog
from tracker.readiness import NotReady
from tracker.store.engine import describe, unavailable_as_error

log = logging.getLogger(__name__)
_WAIT_SAID_EVERY_S = 10.0  # while waiting for the database: a line this often, not one per try

# alembic is imported where it is used: the commands and processes that only read and write jobs
# and users (nearly all) neither load it nor hear it announce its plugins.

_SCRIPTS = pathlib.Path(__file__).parent


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest revision; safe to run again."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    # A connection outside any transaction: alembic begins its own, which it may commit to build
    # an index concurrently (0013).
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def wait_until_answering(
    engine: Engine,
    within_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once the database behind ``engine`` takes a connection and answers a query, trying
    for ``within_s`` seconds (0: once), with capped back-off; the wait is logged when it starts,
    every ten seconds, and when it ends. Raises StoreUnavailable, saying so, when it did not answer.
    """
    deadline = clock() + within_s
    backoff = Backoff(first=0.25, cap=5.0)
    said = OutageLog(log, "database answers", every_s=_WAIT_SAID_EVERY_S, clock=clock)
    while True:
        try:
            with unavailable_as_error(), engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except StoreUnavailable as exc:
            left = deadline - clock()
            if left <= 0:
                waited = f" within {within_s:g} s" if within_s > 0 else ""
                raise StoreUnavailable(f"no answer{waited} ({exc})") from exc
            said.failed("database unavailable", f"{exc}; waiting up to {within_s:g} s for it")
            sleep(min(backoff.next(), left))
        else:
            said.recovered()
            return


@functools.cache
def newest_revision() -> str:
    """The head revision of the scripts shipped in this package."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory(str(_SCRIPTS)).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads, not one: {heads}")
    return str(heads[0])


def schema_problem(engine: Engine) -> NotReady | None:
    """None when the database answers and holds the newest schema; else which check failed
    (``database`` or ``schema``), with a detail for the log that names the driver's error or the
    revisions."""
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
    except sa.exc.DBAPIError as exc:
        return NotReady("database", describe(exc))
    newest = newest_revision()
    if current != (newest,):
        found = ", ".join(current) or "none"
        return NotReady(
            "schema", f"the database schema is at revision {found}, not the newest ({newest}): run tracker migrate"
        )
    return None
