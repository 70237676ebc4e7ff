"""Webhooks' pure parts (SPEC §13): the allow-list and notify_url, the signature (checked by the
standardwebhooks package, an implementation of the specification that is not ours), the
webhook-id, the retry pace, and their settings."""

from __future__ import annotations

import base64
import datetime as dt
import re
import time

import orjson
import pytest
import standardwebhooks
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_labels import _cli_creates
from tracker import metrics, webhooks
from tracker.config import ConfigError, Settings
from tracker.webhooks import NOT_ALLOWED, URL_RULE, AllowList, RetryPolicy, check_notify_url

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
ALLOWED = AllowList.parse("https://*.example.com, http://127.0.0.1:8080, https://hooks.test, http://[::1]:9000")
START = dt.datetime(2026, 12, 6, 9, 30, 0, 123456, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/jobs?team=ops",
        "https://a.example.com",
        "HTTPS://A-1.Example.COM:443/x",  # scheme and host in any case; the scheme's own port written out
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8080?x=1",
        "https://hooks.test/%20a/b;c@d",  # "@" in the path is no credential
        "http://[::1]:9000/",
    ],
)
def test_a_url_at_an_allowed_origin_is_taken_as_given(url: str) -> None:
    assert check_notify_url(url, ALLOWED) == url


def test_a_target_names_its_origin_for_the_logs() -> None:
    assert webhooks.parse_url("HTTPS://A.Example.com/x?token=secret").origin == "https://a.example.com:443"
    assert webhooks.parse_url("http://[::1]:9000/x").origin == "http://[::1]:9000"


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/",  # the wildcard stands for one label, not none
        "https://a.b.example.com/",  # nor for two
        "https://aexample.com/",
        "https://example.com.evil.test/",
        "http://a.example.com/",  # another scheme
        "https://a.example.com:8443/",  # another port
        "http://127.0.0.1:8081/",
        "http://127.0.0.1/",
        "https://hooks.test:80/",
        "http://localhost:8080/",  # a name is not the address it may resolve to
        "http://[::2]:9000/",
    ],
)
def test_a_url_at_any_other_origin_is_not_allowed(url: str) -> None:
    with pytest.raises(ValueError, match=f"^{NOT_ALLOWED}$"):
        check_notify_url(url, ALLOWED)


@pytest.mark.parametrize(
    "url",
    [
        "https://user@a.example.com/",  # credentials, which could also hide the host
        "https://a.example.com@evil.test/",
        "https://user:pw@hooks.test/",
        "https://hooks.test/#frag",
        "https://hooks.test/a b",
        "https://hooks.test/\x00",
        "https://hooks.test/é",
        "https://hooks.test\\@evil.test/",
        "ftp://hooks.test/",
        "//hooks.test/",
        "hooks.test",
        "https://",
        "https:///x",
        "https://hooks.test:/",
        "https://hooks.test:0/",
        "https://hooks.test:065535/",
        "https://hooks.test:65536/",
        "https://hooks.test:+443/",
        "http://127.1:8080/",  # other spellings of an allowed address
        "http://2130706433:8080/",
        "http://127.0.0.01:8080/",
        "http://[0:0:0:0:0:0:0:1]:9000/",
        "http://[::1%25lo]:9000/",
        "http://::1:9000/",
        "https://-a.example.com/",
        "https://a_b.example.com/",
        "https://" + "a" * 64 + ".example.com/",
        "https://hooks.test/" + "x" * webhooks.MAX_URL_CHARS,
    ],
)
def test_what_is_not_a_url_to_send_to_is_refused_saying_what_one_is(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_notify_url(url, ALLOWED)
    assert str(refused.value) == URL_RULE


@pytest.mark.parametrize("value", [None, 1, ["https://hooks.test/"], {"url": "https://hooks.test/"}, ""])
def test_a_notify_url_that_is_no_string_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"^notify_url must be"):
        check_notify_url(value, ALLOWED)


@pytest.mark.parametrize("value", ["https://hooks.test/", "not a url", None])
def test_with_webhooks_off_any_notify_url_is_not_allowed(value: object) -> None:
    with pytest.raises(ValueError, match=f"^{NOT_ALLOWED}$"):
        check_notify_url(value, AllowList.parse(""))


def test_the_allow_list_reads_origins_and_skips_empty_entries() -> None:
    allowed = AllowList.parse(" https://*.Example.com ,, http://[::1]:9000,HTTP://Hooks.Test:80")
    assert [str(origin) for origin in allowed.origins] == [
        "https://*.example.com:443",
        "http://[::1]:9000",
        "http://hooks.test:80",
    ]
    assert not AllowList.parse("") and not AllowList.parse(" , ")


@pytest.mark.parametrize(
    "entry",
    [
        "hooks.test",
        "https://hooks.test/",  # an origin has no path
        "https://hooks.test/jobs",
        "https://hooks.test?x",
        "https://*",
        "https://*.",
        "https://*hooks.test",  # the wildcard is a whole label…
        "https://a.*.hooks.test",  # …and the first one
        "https://*.*.hooks.test",
        "https://*.0.0.1",  # and never stands for part of an address
        "https://*.[::1]",
        "https://user@hooks.test",
        "ftp://hooks.test",
        "https://hooks.test:0",
        "https://hooks.test:99999",
    ],
)
def test_an_entry_that_is_no_origin_is_refused_by_name(entry: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(entry))):
        AllowList.parse(f"https://fine.test,{entry}")


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@given(st.lists(LABEL, min_size=0, max_size=4), st.lists(LABEL, min_size=1, max_size=3))
def test_a_wildcard_stands_for_exactly_one_label(before: list[str], parent: list[str]) -> None:
    if parent[-1].isdigit():
        parent = [*parent, "test"]
    allowed = AllowList.parse("https://*." + ".".join(parent))
    host = ".".join(before + parent)
    target = webhooks.parse_url(f"https://{host}/hook")
    assert allowed.admits(target) == (len(before) == 1)


# Pieces of URLs, well and badly formed, and of the allow-list's own origins, so that the
# generated strings fall on either side of the pattern's edge often.
_SCHEMES = st.sampled_from(["https", "HTTPS", "http", "Http", "ftp", ""])
_HOSTS = st.sampled_from(
    [
        "a.example.com",
        "A.EXAMPLE.com",
        "example.com",
        "a.b.example.com",
        "127.0.0.1",
        "127.1",
        "[::1]",
        "[::0001]",
        "hooks.test",
        "hooks.test.",
        "u@hooks.test",
        "-x.example.com",
        "",
    ]
)
_PORTS = st.sampled_from(["", ":443", ":80", ":8080", ":9000", ":08080", ":", ":70000"])
_RESTS = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x80), max_size=12) | st.sampled_from(
    ["", "/", "/x?y=1", "?q", "#f", "/a b", "/ok/" + "p" * 20]
)


@settings(max_examples=400)
@given(
    st.one_of(
        st.tuples(_SCHEMES, st.sampled_from(["://", ":/", ""]), _HOSTS, _PORTS, _RESTS).map("".join),
        st.from_regex(ALLOWED.pattern() or "", fullmatch=False).filter(lambda text: len(text) < 200),
    )
)
def test_the_documented_pattern_takes_exactly_the_urls_the_api_takes(url: str) -> None:
    # The OpenAPI document states notify_url by this pattern (and MAX_URL_CHARS): a schema-driven
    # client must find every URL it takes accepted, and every other refused.
    pattern = ALLOWED.pattern()
    assert pattern is not None
    documented = re.search(pattern, url) is not None and len(url) <= webhooks.MAX_URL_CHARS
    try:
        check_notify_url(url, ALLOWED)
        taken = True
    except ValueError:
        taken = False
    assert documented == taken, url


def test_the_signature_is_verified_by_an_implementation_of_the_specification_not_ours() -> None:
    key = webhooks.parse_secret(SECRET)
    body = webhooks.message({"id": 7, "status": "SUCCEEDED"})
    now = int(time.time())
    headers = webhooks.signed_headers(key, "msg_abc", now, body)
    assert headers["webhook-signature"].startswith("v1,")
    verifier = standardwebhooks.Webhook(SECRET)
    assert verifier.verify(body, headers) == {"type": "job.finished", "job": {"id": 7, "status": "SUCCEEDED"}}
    for tampered in (
        {**headers, "webhook-id": "msg_abd"},
        {**headers, "webhook-timestamp": str(now - 1)},
    ):
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            verifier.verify(body, tampered)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verifier.verify(body.replace(b"SUCCEEDED", b"FAILED"), headers)
    other = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other).verify(body, headers)


def test_the_message_is_the_type_and_the_row_as_given() -> None:
    row = {"id": 7, "status": "FAILED", "message": None, "notify": {"url": "x", "state": "pending", "attempts": 1}}
    assert orjson.loads(webhooks.message(row)) == {"type": "job.finished", "job": row}


def test_the_webhook_id_is_stable_for_a_job_and_url_and_differs_otherwise() -> None:
    url = "https://hooks.test/jobs"
    first = webhooks.webhook_id(7, START, url)
    assert re.fullmatch(r"msg_[0-9a-f]{32}", first)
    assert webhooks.webhook_id(7, START, url) == first
    others = {
        webhooks.webhook_id(8, START, url),
        webhooks.webhook_id(7, START + dt.timedelta(microseconds=1), url),  # job 7 of another database
        webhooks.webhook_id(7, START, url + "?x"),
    }
    assert first not in others and len(others) == 3


@pytest.mark.parametrize(
    "secret",
    [
        "c2VjcmV0",  # no prefix
        "whsec_",
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"x" * 23).decode(),  # too short
    ],
)
def test_a_secret_not_in_the_specifications_form_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_ followed by the base64"):
        webhooks.parse_secret(secret)


def test_a_secret_without_its_base64_padding_is_taken() -> None:
    assert webhooks.parse_secret(SECRET.rstrip("=")) == bytes(range(32))


def test_the_retry_pace_is_the_specs_five_seconds_doubling_to_an_hour_for_a_day() -> None:
    policy = RetryPolicy()
    delays = [policy.delay(failures) for failures in range(1, 15)]
    assert delays[:11] == [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600]
    assert set(delays[11:]) == {3600}
    # Attempts made at once, then after each delay, until the next would start beyond 24 h.
    since, attempts = 0.0, 1
    while (wait := policy.next_in(attempts, since)) is not None:
        since += wait
        attempts += 1
    assert since <= 86400 < since + policy.delay(attempts)
    assert attempts == 33  # one at once, ten after the doublings (5,115 s in all), then 22 an hour apart


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0, max_value=200_000))
def test_a_delivery_is_given_up_exactly_when_its_next_attempt_would_start_past_the_limit(
    failures: int, since: float
) -> None:
    policy = RetryPolicy(first_s=0.5, cap_s=60, give_up_after_s=3600)
    wait = policy.next_in(failures, since)
    assert (wait is None) == (since + policy.delay(failures) > 3600)
    assert wait is None or 0.5 <= wait <= 60


def test_webhook_settings_are_checked_and_the_secret_never_shown() -> None:
    on = Settings.from_env({"TRACKER_WEBHOOK_ALLOW": "https://hooks.test", "TRACKER_WEBHOOK_SECRET": SECRET})
    assert [str(origin) for origin in on.webhook_origins.origins] == ["https://hooks.test:443"]
    assert on.webhook_key == bytes(range(32))
    assert SECRET not in repr(on)
    assert Settings.from_env(on.to_env()) == on
    assert on.webhook_retries == RetryPolicy(5.0, 3600.0, 86400.0)
    assert not Settings.from_env({}).webhook_origins
    with pytest.raises(ConfigError, match="TRACKER_WEBHOOK_SECRET must be set when TRACKER_WEBHOOK_ALLOW is"):
        Settings.from_env({"TRACKER_WEBHOOK_ALLOW": "https://hooks.test"})
    with pytest.raises(ConfigError, match=re.escape("TRACKER_WEBHOOK_ALLOW: 'https://hooks.test/x' is not an origin")):
        Settings.from_env({"TRACKER_WEBHOOK_ALLOW": "https://hooks.test/x", "TRACKER_WEBHOOK_SECRET": SECRET})
    wrong = "whsec_short"
    with pytest.raises(ConfigError, match="TRACKER_WEBHOOK_SECRET must be whsec_") as refused:
        Settings.from_env({"TRACKER_WEBHOOK_SECRET": wrong})
    assert wrong not in str(refused.value)
    for name, value in (
        ("TRACKER_WEBHOOK_CONCURRENCY", "0"),
        ("TRACKER_WEBHOOK_RETRY_FIRST_S", "0"),
        ("TRACKER_WEBHOOK_RETRY_MAX_S", "1"),  # below the first delay
        ("TRACKER_WEBHOOK_GIVE_UP_S", "0"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


def test_an_outcome_of_no_known_kind_is_not_counted() -> None:
    before = metrics.WEBHOOK_DELIVERIES.labels(outcome="retried")._value.get()  # noqa: SLF001
    metrics.count_webhook_attempt("retried")
    assert metrics.WEBHOOK_DELIVERIES.labels(outcome="retried")._value.get() == before + 1  # noqa: SLF001
    with pytest.raises(ValueError, match="outcome must be one of delivered, retried, failed"):
        metrics.count_webhook_attempt("sent")


def test_jobs_create_takes_a_notify_url_and_refuses_what_is_no_url_to_send_to(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = _cli_creates(monkeypatch, "x", "--notify-url", "https://hooks.test/jobs")
    assert asked == [{"message": "x", "kind": None, "labels": {}, "notify_url": "https://hooks.test/jobs"}]
    assert _cli_creates(monkeypatch, "x", "--notify-url", "https://user@hooks.test/") == []
    assert capsys.readouterr().err.startswith("tracker: --notify-url must be an http:// or https:// URL")


def test_the_client_sends_a_notify_url_only_when_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracker.client import ApiClient

    sent: list[object] = []
    monkeypatch.setattr(
        ApiClient, "_call", lambda self, method, path, body=None: sent.append(body) or {"response": {"id": 3}}
    )
    client = ApiClient("http://127.0.0.1:1", token="t")
    assert client.create_job("x", notify_url="https://hooks.test/") == 3
    assert client.create_job("x") == 3
    assert sent == [{"message": "x", "notify_url": "https://hooks.test/"}, {"message": "x"}]


def test_compose_gives_the_api_and_every_consumer_the_webhook_settings_off_unless_set() -> None:
    import pathlib

    import yaml

    compose = yaml.safe_load((pathlib.Path(__file__).resolve().parents[2] / "compose.yaml").read_text())
    for name in ("api", "consumer", "consumer-cluster"):
        env = compose["services"][name]["environment"]
        assert env["TRACKER_WEBHOOK_ALLOW"] == "${TRACKER_WEBHOOK_ALLOW:-}", name
        assert env["TRACKER_WEBHOOK_SECRET"] == "${TRACKER_WEBHOOK_SECRET:-}", name
    # Unset, compose passes both empty: webhooks are off, and the settings hold.
    assert not Settings.from_env({"TRACKER_WEBHOOK_ALLOW": "", "TRACKER_WEBHOOK_SECRET": ""}).webhook_origins
