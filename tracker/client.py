"""A small HTTP client for the tracker's API: log in, create a job, read its status, cancel jobs."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from tracker.errors import ApiError

API_VERSION = "5.0"


class ApiClient:
    """Talks to ``base_url`` (like ``http://127.0.0.1:8000``) with a Bearer token.

    Give a token, or a username and password to log in with on first use.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if token is None and not (username and password):
            raise ValueError("give a token, or a username and a password")
        self._base = base_url.rstrip("/") + f"/api/{API_VERSION}"
        self._token = token
        self._username = username
        self._password = password
        self._timeout = timeout_s

    def create_job(
        self,
        message: str | None = None,
        *,
        timeout_s: int | None = None,
        heartbeat_timeout_s: int | None = None,
        kind: str | None = None,
        labels: Mapping[str, str] | None = None,
        notify_url: str | None = None,
    ) -> int:
        """Start a job (POST async_status) and return its id; raises ApiError.

        ``timeout_s``: fail it if still PENDING this many seconds after its start; ``heartbeat_timeout_s``:
        fail it if none of its events is received for this long (SPEC §6). None: the server's defaults.
        ``kind`` (e.g. ``deliveryservice.regenerate``) and ``labels`` (e.g. ``{"env": "prod"}``) say
        what the job is, for good (SPEC §11); the API refuses (400, ApiError) what it cannot take.
        ``notify_url``: where the tracker POSTs the job's row, signed, once it has ended (SPEC §13);
        the server must allow its origin (``TRACKER_WEBHOOK_ALLOW``), else 400.
        """
        body: dict[str, Any] = {}
        for name, value in (
            ("message", message),
            ("timeout_s", timeout_s),
            ("heartbeat_timeout_s", heartbeat_timeout_s),
            ("kind", kind),
            ("labels", dict(labels) if labels else None),
            ("notify_url", notify_url),
        ):
            if value is not None:
                body[name] = value
        return int(self._call("POST", "/async_status", body)["response"]["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        """The job's status object, as GET async_status/{id} returns it; raises ApiError."""
        status: dict[str, Any] = self._call("GET", f"/async_status/{job_id}")["response"]
        return status

    def cancel_job(self, job_id: int, message: str | None = None) -> dict[str, Any]:
        """Ask for a PENDING job's cancellation (SPEC §12) and return its row, with
        ``cancel_requested_at``; raises ApiError (409 for a finished job, 404, 403)."""
        body = {} if message is None else {"message": message}
        row: dict[str, Any] = self._call("POST", f"/async_status/{job_id}/cancel", body)["response"]
        return row

    def cancel_jobs(self, filters: Sequence[tuple[str, str]], message: str | None = None) -> int:
        """Ask for the cancellation of every PENDING job the list's ``filters`` match (query
        parameters as ``(name, value)`` pairs, at least one besides ``status``), 10,000 at most;
        how many. Raises ApiError."""
        body = {} if message is None else {"message": message}
        path = "/async_status/cancel?" + urllib.parse.urlencode(list(filters))
        return int(self._call("POST", path, body)["response"]["requested"])

    def _login(self) -> str:
        request = self._request("POST", "/user/login", {"u": self._username, "p": self._password})
        with self._open(request) as response:
            for header in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = header.partition("=")
                if name.strip() == "access_token":
                    return rest.split(";", 1)[0]
        raise ApiError(200, "login answered without an access_token cookie")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._token is None:
            self._token = self._login()
        request = self._request(method, path, body)
        request.add_header("Authorization", f"Bearer {self._token}")
        with self._open(request) as response:
            answer: dict[str, Any] = json.loads(response.read())  # the API answers every request with an object
            return answer

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> urllib.request.Request:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._base + path, data=data, method=method)  # noqa: S310 - our own API
        if data is not None:
            request.add_header("Content-Type", "application/json")
        return request

    def _open(self, request: urllib.request.Request) -> http.client.HTTPResponse:
        try:
            # typeshed leaves urlopen's answer as Any; for an http(s) URL it is an HTTPResponse.
            response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=self._timeout)  # noqa: S310 - our own API
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _alert_text(exc.read())) from None
        return response


def _alert_text(body: bytes) -> str:
    try:
        return "; ".join(alert["text"] for alert in json.loads(body)["alerts"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")
