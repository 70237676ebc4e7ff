"""The schema's Alembic migrations (``versions/``), and ``migrate``, which applies them."""

from __future__ import annotations

import pathlib

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

_SCRIPTS = pathlib.Path(__file__).parent


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest revision; safe to run again."""
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
