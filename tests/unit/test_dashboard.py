"""The dashboard's files as the API serves them, and the dead-letter count it reads (no service needed)."""

from __future__ import annotations

import datetime as dt
import re
import tomllib

import falcon
import falcon.testing
import pytest

from api import app as api_app
from api import dashboard
from bench.processes import ROOT
from tracker import auth
from tracker.config import Settings
from tracker.errors import DeadLettersUnavailable
from tracker.users import User

SECRET = "unit-secret-" + "d" * 40
FILES = {
    "/": "text/html; charset=utf-8",
    "/dashboard.css": "text/css; charset=utf-8",
    "/dashboard.js": "text/javascript; charset=utf-8",
    "/details.js": "text/javascript; charset=utf-8",
    "/cancel.js": "text/javascript; charset=utf-8",
    "/dashboard.svg": "image/svg+xml",
}


class RolesByName:
    """Every name is a user whose role is the name itself (``operations``, ``read-only``)."""

    def get(self, username: str) -> User | None:
        return User(username, username, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), account_id=username)


class Counter:
    """A dead-letter queue of ``count`` messages that counts how often it was asked; raises if told to."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.asked = 0
        self.failing = False

    def __call__(self) -> int:
        self.asked += 1
        if self.failing:
            raise DeadLettersUnavailable("cannot reach RabbitMQ at 127.0.0.1:5672")
        return self.count


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_with(count: Counter) -> falcon.testing.TestClient:
    deps = api_app.Deps(
        jobs=None,  # type: ignore[arg-type]
        users=RolesByName(),  # type: ignore[arg-type]
        throttle=None,  # type: ignore[arg-type]
        tokens=auth.Tokens(SECRET, 60),
        settings=Settings(secret=SECRET),
        dead_letter_count=count,
    )
    return falcon.testing.TestClient(api_app.create_app(deps))


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {auth.Tokens(SECRET, 60).issue(role, role)}"}


@pytest.fixture
def client() -> falcon.testing.TestClient:
    return client_with(Counter(0))


@pytest.mark.parametrize(("path", "content_type"), FILES.items())
def test_each_file_is_served_with_its_type_policy_and_validator(
    client: falcon.testing.TestClient, path: str, content_type: str
) -> None:
    first = client.simulate_get(path)  # no credentials: the page holds the login form
    assert first.status_code == 200
    assert first.headers["content-type"] == content_type
    assert first.headers["cache-control"] == "no-cache"
    assert first.headers["x-content-type-options"] == "nosniff"
    policy = first.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert first.content and re.fullmatch(r'"[0-9a-f]{32}"', first.headers["etag"])

    again = client.simulate_get(path, headers={"If-None-Match": first.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")
    weak = client.simulate_get(path, headers={"If-None-Match": f'W/{first.headers["etag"]}, "other"'})
    assert weak.status_code == 304
    changed = client.simulate_get(path, headers={"If-None-Match": '"0123456789abcdef0123456789abcdef"'})
    assert changed.status_code == 200 and changed.content == first.content


def test_the_page_loads_nothing_from_elsewhere_and_nothing_inline(client: falcon.testing.TestClient) -> None:
    page = client.simulate_get("/").text
    # Its own files only, by path: a closed network has no CDN.
    assert set(re.findall(r'(?:src|href)="([^"#]+)"', page)) == {"/dashboard.svg", "/dashboard.css", "/dashboard.js"}
    # The policy allows no inline script or style: the page has none.
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert "<style" not in page and " style=" not in page and re.search(r" on[a-z]+=", page) is None
    for path in FILES:
        text = client.simulate_get(path).text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a load
        assert re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text) is None, path


def test_every_field_of_the_page_has_a_label(client: falcon.testing.TestClient) -> None:
    page = client.simulate_get("/").text
    labelled = set(re.findall(r'<label for="([^"]+)"', page))
    for tag in re.findall(r"<(?:input|select)\b[^>]*>", page):
        field_id = re.search(r'id="([^"]+)"', tag)
        wrapped = page.count(f"<label><{tag[1:]}")  # a checkbox inside its label
        assert wrapped or (field_id and field_id[1] in labelled), tag


def test_the_files_ship_in_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "static/*" in config["tool"]["setuptools"]["package-data"]["api"]
    for name, _ in dashboard.ASSETS.values():
        assert (ROOT / "api" / "static" / name).is_file()


def test_dead_letters_need_the_read_permission() -> None:
    count = Counter(7)
    client = client_with(count)
    anonymous = client.simulate_get("/api/5.0/dead_letters")
    assert (anonymous.status_code, anonymous.json) == (
        401,
        {"alerts": [{"text": "unauthorized, please log in.", "level": "error"}]},
    )
    read_only = client.simulate_get("/api/5.0/dead_letters", headers=bearer("read-only"))
    assert (read_only.status_code, read_only.json["alerts"][0]["text"]) == (
        403,
        "missing required Permissions: ASYNC-STATUS:READ",
    )
    assert count.asked == 0
    allowed = client.simulate_get("/api/4.0/dead_letters", headers=bearer("operations"))
    assert (allowed.status_code, allowed.json) == (200, {"response": {"count": 7}})


def test_the_count_is_asked_once_per_interval_and_an_outage_is_a_503() -> None:
    count, clock = Counter(3), Clock()
    resource = dashboard.DeadLetterCount(count, ttl_s=5, clock=clock)
    app = falcon.App()
    app.add_route("/count/{version}", resource)  # without the authentication layer: the cache alone
    api_app.errors.register(app)
    client = falcon.testing.TestClient(app)

    assert client.simulate_get("/count/5.0").json == {"response": {"count": 3}}
    count.count = 4
    clock.now += 4.9
    assert client.simulate_get("/count/5.0").json == {"response": {"count": 3}}  # kept
    clock.now += 0.1
    assert client.simulate_get("/count/5.0").json == {"response": {"count": 4}}  # asked again
    assert count.asked == 2

    count.failing = True
    clock.now += 5
    for _ in range(3):  # the outage is kept as long as a count would be: the broker is asked once
        away = client.simulate_get("/count/5.0")
        assert away.status_code == 503
        assert away.json == {"alerts": [{"text": "RabbitMQ unavailable, try again later", "level": "error"}]}
        assert away.headers["retry-after"] == "5"
    assert count.asked == 3
    count.failing = False
    clock.now += 5
    assert client.simulate_get("/count/5.0").json == {"response": {"count": 4}}


def _luminance(colour: str) -> float:
    """WCAG 2's relative luminance of ``#rrggbb``."""
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_text_and_its_backgrounds_keep_a_contrast_of_at_least_4_5_to_1() -> None:
    css = dashboard.load("dashboard.css").decode()
    colours = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6})", css))
    pairs = [  # (text, background) as the rules combine them
        ("ink", "paper"),
        ("ink", "band"),
        ("muted", "paper"),
        ("muted", "band"),
        ("link", "paper"),
        ("link", "band"),
        ("link", "failed-bg"),
        ("pending-ink", "pending-bg"),
        ("succeeded-ink", "succeeded-bg"),
        ("failed-ink", "failed-bg"),
    ]
    for text, background in pairs:
        lighter, darker = sorted((_luminance(colours[text]), _luminance(colours[background])), reverse=True)
        assert (lighter + 0.05) / (darker + 0.05) >= 4.5, (text, background)  # WCAG 2 AA, normal text
