"""Settings from the environment: SPEC §4 defaults, conversions, and clear errors."""

from __future__ import annotations

import pytest

from tracker.config import ConfigError, Settings


def test_defaults_are_the_specs():
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///tracker.db"
    assert settings.amqp_url == "amqp://guest:guest@localhost:5672/%2F"
    assert settings.secret is None
    assert settings.bind == "127.0.0.1:8000"
    assert (settings.exchange, settings.queue) == ("async_status", "async_status.events")
    assert (settings.dead_exchange, settings.dead_queue) == ("async_status.dlx", "async_status.dead")


def test_values_are_read_and_converted():
    settings = Settings.from_env(
        {
            "TRACKER_DATABASE_URL": "postgresql+psycopg://db/x",
            "TRACKER_BATCH_SIZE": "50",
            "TRACKER_PREFETCH": "100",
            "TRACKER_SECURE_COOKIES": "true",
            "TRACKER_USER_CACHE_S": "2.5",
            "TRACKER_ROW_CACHE_ROWS": "0",
            "TRACKER_API_THREADS": "64",
            "TRACKER_API_READ_TIMEOUT_S": "2.5",
            "UNRELATED": "ignored",
        }
    )
    assert settings.database_url == "postgresql+psycopg://db/x"
    assert (settings.batch_size, settings.prefetch, settings.secure_cookies) == (50, 100, True)
    assert settings.user_cache_s == 2.5
    assert settings.row_cache_rows == 0
    assert (settings.api_threads, settings.api_read_timeout_s) == (64, 2.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRACKER_BATCH_SIZE": "many"}, "TRACKER_BATCH_SIZE must be an integer"),
        ({"TRACKER_FLUSH_MS": "0"}, "TRACKER_FLUSH_MS must be at least 1"),
        ({"TRACKER_BATCH_SIZE": "3000"}, "TRACKER_PREFETCH must be at least TRACKER_BATCH_SIZE"),
        ({"TRACKER_BIND": "8000"}, "TRACKER_BIND must be HOST:PORT"),
        ({"TRACKER_METRICS_BIND": "9464"}, "TRACKER_METRICS_BIND must be HOST:PORT"),
        ({"TRACKER_SECURE_COOKIES": "maybe"}, "TRACKER_SECURE_COOKIES must be true or false"),
        ({"TRACKER_ROW_CACHE_ROWS": "-1"}, "TRACKER_ROW_CACHE_ROWS must be at least 0"),
        ({"TRACKER_API_THREADS": "0"}, "TRACKER_API_THREADS must be an integer from 1 to 10000"),
        ({"TRACKER_API_READ_TIMEOUT_S": "0"}, "TRACKER_API_READ_TIMEOUT_S must be from 0.1 to 3600 seconds"),
        ({"TRACKER_API_MAX_WAITS": "256"}, "TRACKER_API_MAX_WAITS must be an integer from 0 to TRACKER_API_THREADS"),
        ({"TRACKER_API_MAX_WAITS": "-1"}, "TRACKER_API_MAX_WAITS must be an integer from 0 to TRACKER_API_THREADS"),
        ({"TRACKER_API_MAX_WAITS_PER_USER": "-1"}, "TRACKER_API_MAX_WAITS_PER_USER must be at least 0"),
        ({"TRACKER_API_MAX_STREAMS": "-1"}, "TRACKER_API_MAX_STREAMS must be an integer from 0 to 1000000"),
        ({"TRACKER_API_MAX_STREAMS": "1000001"}, "TRACKER_API_MAX_STREAMS must be an integer from 0 to 1000000"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_the_secret_is_not_in_the_repr():
    assert "s3cret-value" not in repr(Settings.from_env({"TRACKER_SECRET": "s3cret-value"}))


def test_to_env_is_read_back_by_from_env():
    settings = Settings(
        database_url="sqlite:///x.db",
        secret="k" * 40,
        batch_size=7,
        prefetch=9,
        secure_cookies=True,
        user_cache_s=1.5,
        health_file="/tmp/alive",
    )
    assert Settings.from_env(settings.to_env()) == settings
    assert "TRACKER_SECRET" not in Settings().to_env()


def test_an_empty_metrics_bind_turns_the_consumers_endpoints_off_and_round_trips():
    assert Settings.from_env({}).metrics_bind == "127.0.0.1:9464"
    off = Settings.from_env({"TRACKER_METRICS_BIND": ""})
    assert off.metrics_bind == ""
    assert Settings.from_env(off.to_env()) == off
    assert Settings.from_env({"TRACKER_METRICS": "false"}).metrics is False


def test_the_kinds_of_the_duration_metric_are_capped_at_50_by_default_from_0_to_1000():
    assert Settings.from_env({}).metrics_max_kinds == 50
    assert Settings.from_env({"TRACKER_METRICS_MAX_KINDS": "0"}).metrics_max_kinds == 0
    assert Settings.from_env({"TRACKER_METRICS_MAX_KINDS": "1000"}).metrics_max_kinds == 1000
    for wrong in ("-1", "1001"):
        with pytest.raises(ConfigError, match=r"^TRACKER_METRICS_MAX_KINDS must be an integer from 0 to 1000$"):
            Settings.from_env({"TRACKER_METRICS_MAX_KINDS": wrong})


def test_held_waits_are_capped_by_default_at_three_quarters_of_the_threads_and_one_user_at_three_quarters_of_that():
    assert (Settings().max_waits, Settings().max_waits_per_user) == (192, 144)  # 256 threads
    assert (Settings(api_threads=64).max_waits, Settings(api_threads=64).max_waits_per_user) == (48, 36)
    assert Settings(api_threads=1).max_waits == 0  # the one thread is never held by a wait
    given = Settings.from_env({"TRACKER_API_MAX_WAITS": "100"})
    assert (given.max_waits, given.max_waits_per_user) == (100, 75)
    both = Settings.from_env({"TRACKER_API_MAX_WAITS": "100", "TRACKER_API_MAX_WAITS_PER_USER": "100"})
    assert (both.max_waits, both.max_waits_per_user) == (100, 100)
    assert Settings.from_env(both.to_env()) == both
    assert "TRACKER_API_MAX_WAITS" not in Settings().to_env()  # derived, so it follows TRACKER_API_THREADS


def test_public_origins_are_read_normalized_and_checked():
    settings = Settings.from_env({"TRACKER_PUBLIC_ORIGIN": " HTTPS://Tracker.Example.com:443/ , http://[::1]:8000"})
    assert settings.public_origins == ("https://tracker.example.com", "http://[::1]:8000")
    assert Settings.from_env({}).public_origins == ()  # the request's own origin serves
    for bad in ("tracker.example.com", "https://tracker.example.com/dashboard", "null", "ftp://x", "https://u@x"):
        with pytest.raises(ConfigError, match="TRACKER_PUBLIC_ORIGIN must be origins"):
            Settings.from_env({"TRACKER_PUBLIC_ORIGIN": bad})


def test_streams_have_their_own_cap_of_4096_per_worker_not_the_waits():
    assert Settings().api_max_streams == 4096
    assert Settings.from_env({"TRACKER_API_MAX_STREAMS": "1000"}).api_max_streams == 1000
