"""The schema's Alembic migrations (``versions/``), ``migrate``, which applies them, and the check
that a database holds the newest (``schema_problem``, for readiness)."""

from __future__ import annotations

import functools
import pathlib

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tracker.readiness import NotReady
from tracker.store.engine import describe

# alembic is imported where it is used: the commands and processes that only read and write jobs
# and users (nearly all) neither load it nor hear it announce its plugins.

_SCRIPTS = pathlib.Path(__file__).parent


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest revision; safe to run again."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


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
