"""GET of a process's plain HTTP endpoints (a consumer's /healthz and /readyz): the status and the JSON body."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def get(url: str) -> tuple[int, object]:
    """The status and JSON body of a GET of ``url``, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - a local test server
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
