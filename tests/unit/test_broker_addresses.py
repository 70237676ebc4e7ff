"""Several broker addresses (SPEC §10): TRACKER_AMQP_URL's list, and the order nodes are tried in."""

from __future__ import annotations

import collections
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker.broker import Rotation, address
from tracker.config import ConfigError, Settings

THREE = "amqp://u:pw@n1:5672/%2F,amqp://u:pw@n2:5673/%2F, amqps://u:pw@n3/%2F"


def test_a_comma_separated_list_is_read_as_the_nodes_of_a_cluster():
    settings = Settings.from_env({"TRACKER_AMQP_URL": THREE})
    assert settings.amqp_urls == ("amqp://u:pw@n1:5672/%2F", "amqp://u:pw@n2:5673/%2F", "amqps://u:pw@n3/%2F")
    assert Settings.from_env(settings.to_env()) == settings


def test_one_address_is_a_list_of_one():
    assert Settings().amqp_urls == ("amqp://guest:guest@localhost:5672/%2F",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("amqp://n1,,amqp://n2", "TRACKER_AMQP_URL address 2 of 3 is empty"),
        ("amqp://n1,", "TRACKER_AMQP_URL address 2 of 2 is empty"),
        ("amqp://n1,http://n2", "TRACKER_AMQP_URL address 2 of 2 must be an amqp:// or amqps:// URL"),
        ("n1:5672", "TRACKER_AMQP_URL must be an amqp:// or amqps:// URL"),
        ("amqp://n1:56x72/", r"TRACKER_AMQP_URL is not a valid URL \(its host or port\)"),
        ("amqp://n1:99999/", r"TRACKER_AMQP_URL is not a valid URL \(its host or port\)"),
        ("amqp://n1,amqp:///%2F", "TRACKER_AMQP_URL address 2 of 2 names no host"),
    ],
)
def test_a_bad_address_is_refused_naming_the_setting_and_its_place(value, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"TRACKER_AMQP_URL": value})


@pytest.mark.parametrize(
    "value",
    [
        "amqp://tracker:s3cret-pw@n1:5672/%2F,http://tracker:s3cret-pw@n2",
        "amqp://tracker:s3cret-pw@n1:port/",
        "amqp://tracker:s3cret/pw@n1/",  # an unencoded "/" makes the password look like the host
        "amqp://tracker:s3cret-pw@[::1/",
    ],
)
def test_a_password_is_never_in_the_error(value):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"TRACKER_AMQP_URL": value})
    assert "s3cret" not in str(refused.value)
    assert "tracker:***@" in str(refused.value)


def test_address_is_host_and_port_without_credentials():
    assert address("amqp://u:pw@n1:5673/%2F") == "n1:5673"
    assert address("amqp://u:pw@n1/%2F") == "n1:5672"
    assert address("amqps://u:pw@n1/%2F") == "n1:5671"


@given(st.integers(min_value=1, max_value=7), st.integers(min_value=0), st.data())
def test_every_connect_tries_each_node_once_starting_after_the_last_one_reached(count, seed, data):
    rotation = Rotation(count, random.Random(seed))
    first = rotation.order()
    assert sorted(first) == list(range(count))
    for _ in range(3):
        reached = data.draw(st.sampled_from(rotation.order()))
        rotation.connected(reached)
        order = rotation.order()
        assert sorted(order) == list(range(count))
        assert order[-1] == reached  # the node just connected to, if it goes, is tried last
        # the ring stays the shuffled one: the next is the one after ``reached`` in it
        assert order[0] == first[(first.index(reached) + 1) % count]


def test_processes_started_together_spread_over_the_nodes():
    firsts = collections.Counter(Rotation(3).order()[0] for _ in range(3000))
    assert set(firsts) == {0, 1, 2}
    assert min(firsts.values()) > 800  # about 1000 each


def test_no_address_is_an_error():
    with pytest.raises(ValueError, match="at least one broker address"):
        Rotation(0)
