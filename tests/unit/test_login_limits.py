"""What a failed login counts against, and how many of each are allowed (issue 24, point 5)."""

from __future__ import annotations

import pytest

from tracker.config import ConfigError, Settings
from tracker.users import LoginLimits


def test_an_attempt_counts_against_the_user_at_its_address_the_address_and_the_user() -> None:
    limits = LoginLimits(per_user_at_address=5, per_address=50, per_user=20, lockout_s=60)
    assert limits.subjects("ops", "10.0.0.1") == [("client:10.0.0.1", 50), ("pair:10.0.0.1 ops", 5), ("user:ops", 20)]
    # A name no user can have counts against the address alone.
    assert limits.subjects(None, "10.0.0.1") == [("client:10.0.0.1", 50)]


def test_a_limit_of_zero_counts_nothing() -> None:
    limits = LoginLimits(per_user_at_address=5, per_address=0, per_user=0, lockout_s=60)
    assert limits.subjects("ops", "10.0.0.1") == [("pair:10.0.0.1 ops", 5)]


def test_the_limits_come_from_the_settings_with_sane_defaults() -> None:
    assert LoginLimits.of(Settings()) == LoginLimits(5, 50, 20, 60)
    assert LoginLimits.of(
        Settings.from_env({"TRACKER_LOGIN_MAX_FAILURES_PER_ADDRESS": "0", "TRACKER_LOGIN_MAX_FAILURES_PER_USER": "7"})
    ) == LoginLimits(5, 0, 7, 60)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRACKER_LOGIN_MAX_FAILURES": "0"}, "TRACKER_LOGIN_MAX_FAILURES must be at least 1"),
        ({"TRACKER_LOGIN_LOCKOUT_S": "0"}, "TRACKER_LOGIN_LOCKOUT_S must be at least 1"),
        ({"TRACKER_LOGIN_MAX_FAILURES_PER_ADDRESS": "-1"}, "TRACKER_LOGIN_MAX_FAILURES_PER_ADDRESS must be at least 0"),
        ({"TRACKER_LOGIN_MAX_FAILURES_PER_USER": "-1"}, "TRACKER_LOGIN_MAX_FAILURES_PER_USER must be at least 0"),
    ],
)
def test_bad_limits_name_their_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
