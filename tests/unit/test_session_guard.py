"""The rule that keeps other pages from acting with a user's cookies (issue 24, point 1), without I/O."""

from __future__ import annotations

import pytest

from api.middleware import from_own_origin, is_json
from tracker.config import normalized_origin

OWN = frozenset({"https://tracker.example.com"})


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        ("application/json", True),
        ("APPLICATION/JSON", True),
        ("Application/Json; charset=utf-8", True),
        (" application/json ;charset=UTF-8", True),
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/*", False),
        ("text/plain", False),
        ("application/jsonp", False),
        ("application/json-patch+json", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
    ],
)
def test_only_json_is_json(content_type: str | None, json: bool) -> None:
    assert is_json(content_type) is json


@pytest.mark.parametrize(
    ("origin", "fetch_site", "own"),
    [
        (None, None, True),  # curl, a worker's client: neither header
        ("https://tracker.example.com", None, True),
        ("HTTPS://TRACKER.EXAMPLE.COM:443", None, True),
        ("https://tracker.example.com", "same-origin", True),
        (None, "none", True),
        (None, "Same-Origin", True),
        ("https://tracker.example.com:8443", None, False),  # another port: same site, another origin
        ("http://tracker.example.com", None, False),  # another scheme
        ("https://evil.tracker.example.com", None, False),  # a sibling subdomain
        ("null", None, False),
        ("", None, False),
        ("https://tracker.example.com", "same-site", False),
        ("https://tracker.example.com", "cross-site", False),
        (None, "same-site", False),
        (None, "", False),
    ],
)
def test_only_the_trackers_own_origin_acts(origin: str | None, fetch_site: str | None, own: bool) -> None:
    assert from_own_origin(origin, fetch_site, lambda: OWN) is own


def test_the_own_origins_are_asked_for_only_when_there_is_an_origin() -> None:
    def never() -> frozenset[str]:
        raise AssertionError("asked for the own origins without an Origin to compare")

    assert from_own_origin(None, "same-origin", never)


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("http://a.example", "http://a.example"),
        ("http://a.example:80", "http://a.example"),
        ("https://a.example:443/", "https://a.example"),
        ("HTTPS://A.Example:8443", "https://a.example:8443"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("null", None),
        ("a.example", None),
        ("http://a.example/path", None),
        ("http://a.example?x=1", None),
        ("http://user:pw@a.example", None),
        ("http://a.example:99999", None),
        ("javascript://a.example", None),
        ("http://", None),
    ],
)
def test_origins_are_compared_as_browsers_send_them(text: str, origin: str | None) -> None:
    assert normalized_origin(text) == origin
