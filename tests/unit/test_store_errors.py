"""Database errors become domain errors at the store's edge: an outage, or data refused."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tracker.errors import StoreRefused, StoreUnavailable
from tracker.store import refused_as_error, unavailable_as_error


class CheckViolation(Exception):
    """Stands for the driver's exception (psycopg.errors.CheckViolation)."""

    def __str__(self) -> str:
        return 'new row for relation "async_status" violates check constraint "no_poison"\nDETAIL: ...'


def driver_error(kind: type[sa.exc.DBAPIError], invalidated: bool = False) -> sa.exc.DBAPIError:
    return kind("UPDATE async_status ...", {}, CheckViolation(), connection_invalidated=invalidated)


def both(exc: BaseException) -> None:
    """Raise ``exc`` through the two translations, in the order the stores nest them."""
    with refused_as_error(), unavailable_as_error():
        raise exc


@pytest.mark.parametrize("kind", [sa.exc.IntegrityError, sa.exc.DataError, sa.exc.ProgrammingError])
def test_data_the_database_refuses_is_store_refused_chained_from_the_driver(kind: type[sa.exc.DBAPIError]) -> None:
    original = driver_error(kind)
    with pytest.raises(StoreRefused) as raised:
        both(original)
    assert raised.value.error == "CheckViolation"
    assert (
        str(raised.value) == 'CheckViolation: new row for relation "async_status" violates check constraint "no_poison"'
    )
    assert raised.value.__cause__ is original


@pytest.mark.parametrize(
    "original",
    [
        driver_error(sa.exc.OperationalError),
        driver_error(sa.exc.InterfaceError),
        driver_error(sa.exc.IntegrityError, invalidated=True),
    ],
)
def test_an_outage_is_store_unavailable_not_a_refusal(original: sa.exc.DBAPIError) -> None:
    with pytest.raises(StoreUnavailable) as raised:
        both(original)
    assert raised.value.__cause__ is original
    with pytest.raises(type(original)), refused_as_error():
        raise original


def test_what_is_not_a_database_error_passes_through() -> None:
    with pytest.raises(KeyError):
        both(KeyError("a bug"))
