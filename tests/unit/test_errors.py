"""The exception tree of tracker/errors.py: every error the parts raise to each other is in it, drawn as it is."""

from __future__ import annotations

import builtins
import re

from tracker import cli, errors


def _own_classes() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == errors.__name__
    }


def test_every_error_is_drawn_in_the_docstrings_tree_with_the_builtin_it_derives_from() -> None:
    assert errors.__doc__ is not None
    drawn = dict(re.findall(r"[├└]── (\w+)(?:\((\w+)\))?", errors.__doc__))
    classes = _own_classes()
    assert set(drawn) == set(classes) - {"TrackerError"}
    for name, builtin in drawn.items():
        assert issubclass(classes[name], errors.TrackerError), name
        if builtin:
            assert issubclass(classes[name], getattr(builtins, builtin)), name


def test_the_commands_and_the_http_servers_errors_are_of_the_tree() -> None:
    assert cli.UsageError is errors.UsageError
    assert issubclass(errors.UsageError, ValueError)  # printed, exit 2, as the other ValueErrors
    # gunicorn passes over an OSError from a client's socket without answering: a request not
    # received in time must not be one, or it would get no 408.
    assert not issubclass(errors.RequestTimedOut, OSError)
