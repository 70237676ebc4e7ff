"""Webhooks (SPEC §13), the pure parts: which URLs a job may name, the message, its signature, the retry pace.

No I/O. The API refuses a ``notify_url`` with ``check_notify_url``'s ValueError (400); the
consumers' deliverer (``consumers/webhooks.py``) sends ``message`` with ``signed_headers`` as the
Standard Webhooks specification says, and retries by ``RetryPolicy``.

The allow-list (``TRACKER_WEBHOOK_ALLOW``) is compared with the URL as written: its scheme, its
host (a name, a dotted IPv4 address or a bracketed IPv6 address, each in one spelling only, so
that no other spelling of an allowed host passes, nor of a refused one) and its port. It does not
see what the name resolves to: README's "Webhooks" says what that leaves open (DNS rebinding).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import orjson

from tracker import timefmt

MAX_URL_CHARS = 2048
TIMEOUT_S = 10.0  # a 2xx answer within this is delivered; anything else is retried
EVENT_TYPE = "job.finished"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"  # the row's notify.state
# tracker_webhook_deliveries_total{outcome}: each attempt counts once, as delivered, as failed and
# to be tried again (retried), or as failed for good (failed: the last one, 24 h on).
OUTCOMES = (DELIVERED, "retried", FAILED)
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # the specification's advice: 24 to 64 random bytes

NOT_ALLOWED = "notify_url is not allowed by this server"
URL_RULE = (
    f"notify_url must be an http:// or https:// URL of at most {MAX_URL_CHARS} printable ASCII characters, "
    "with a host name or address, without credentials or a fragment"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_LABEL_PATTERN = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = re.compile(r"[1-9][0-9]{0,4}", re.ASCII)
_MAX_HOST_CHARS = 253
# What follows the authority, as check_notify_url takes it: nothing, or a path or a query of
# printable ASCII but "#" (a fragment is never sent, so it is refused rather than dropped).
_REST_PATTERN = '(?:[/?][!-"$-~]*)?'


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a notify_url sends to: its scheme, its host (lowercase; an IPv6 address without its
    brackets), its port (the scheme's when it names none) and the request's target (path and query)."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def is_address(self) -> bool:
        """Whether the host is an IP address rather than a name."""
        return _address(self.host) is not None

    @property
    def origin(self) -> str:
        """``scheme://host:port``: what logs name (a path or query may hold a receiver's token)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_url(value: Any) -> Target:
    """``value`` as a notify_url; raises ValueError(URL_RULE) for anything else.

    Taken: ``http`` or ``https`` (any case), then a host that is a name (labels of letters, digits
    and ``-``, the last not all digits), a dotted IPv4 address or a bracketed IPv6 address in its
    shortest form, an optional port (1 to 65535, no leading zero), and an optional path or query.
    Refused: credentials (``user@``), a fragment, whitespace, control and non-ASCII characters.
    """
    if type(value) is not str or not 0 < len(value) <= MAX_URL_CHARS or not _printable(value):
        raise ValueError(URL_RULE)
    scheme, sep, rest = value.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS or "#" in rest:
        raise ValueError(URL_RULE)
    end = min((at for at in (rest.find("/"), rest.find("?")) if at >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:]
    host, port = _authority(scheme, authority.lower())
    if host is None:
        raise ValueError(URL_RULE)
    return Target(scheme, host, port, path if path.startswith("/") else "/" + path)


@dataclasses.dataclass(frozen=True)
class Origin:
    """One origin of the allow-list: a scheme, a host (``wildcard``: any one label, then ``host``) and a port."""

    scheme: str
    host: str
    port: int
    wildcard: bool = False

    def admits(self, target: Target) -> bool:
        """Whether ``target`` is at this origin (a wildcard stands for exactly one label of a name)."""
        if (target.scheme, target.port) != (self.scheme, self.port):
            return False
        if not self.wildcard:
            return target.host == self.host
        label, dot, parent = target.host.partition(".")
        return bool(dot) and parent == self.host and not target.is_address and _LABEL.fullmatch(label) is not None

    def pattern(self) -> str:
        """A regular expression (JSON Schema's dialect) of the URLs' beginnings this origin admits."""
        scheme = "".join(f"[{c.upper()}{c}]" for c in self.scheme)
        host = "".join(f"[{c.upper()}{c}]" if c.isalpha() else re.escape(c) for c in self.host)
        if _address(self.host) is not None and ":" in self.host:
            host = r"\[" + host + r"\]"
        if self.wildcard:
            host = _LABEL_PATTERN + r"\." + host
        port = f":{self.port}"
        if self.port == _DEFAULT_PORTS[self.scheme]:
            port = f"(?:{port})?"
        return f"{scheme}://{host}{port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{'*.' if self.wildcard else ''}{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class AllowList:
    """The origins notify_urls may point at (``TRACKER_WEBHOOK_ALLOW``); empty: webhooks are off."""

    origins: tuple[Origin, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """Comma-separated origins, ``scheme://host[:port]``, ``*`` allowed as a host's whole first
        label (``https://*.example.com``); empty entries are skipped. Raises ValueError naming the
        entry that is not one."""
        origins = []
        for entry in (part.strip() for part in text.split(",")):
            if entry:
                origins.append(_origin(entry))
        return cls(tuple(origins))

    def __bool__(self) -> bool:
        return bool(self.origins)

    def admits(self, target: Target) -> bool:
        return any(origin.admits(target) for origin in self.origins)

    def pattern(self) -> str | None:
        """A regular expression (JSON Schema's dialect) of exactly the URLs ``check_notify_url``
        takes, but for their length (``MAX_URL_CHARS``, and a host name's 253 characters); None when
        none are."""
        if not self.origins:
            return None
        either = "|".join(origin.pattern() for origin in self.origins)
        return f"^(?:{either}){_REST_PATTERN}(?![\\s\\S])"


def check_notify_url(value: Any, allowed: AllowList) -> str:
    """``value`` as a job's notify_url, as given; raises ValueError with the API's answer (400):
    ``NOT_ALLOWED`` while webhooks are off, or for a URL outside ``allowed``, ``URL_RULE`` for
    what is not a URL it could send to."""
    if not allowed:
        raise ValueError(NOT_ALLOWED)
    if not allowed.admits(parse_url(value)):
        raise ValueError(NOT_ALLOWED)
    return str(value)


def parse_secret(text: str) -> bytes:
    """The key of a secret in the specification's form, ``whsec_`` and base64 (padding optional);
    raises ValueError unless it holds at least MIN_SECRET_BYTES bytes."""
    rule = f"must be {SECRET_PREFIX} followed by the base64 of at least {MIN_SECRET_BYTES} random bytes"
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(rule)
    encoded = text.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(rule) from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(rule)
    return key


def webhook_id(job_id: int, start_time: dt.datetime, url: str) -> str:
    """The ``webhook-id`` of a job's delivery to ``url``: the same at every attempt, another for
    another job (of this database or another: the start time takes part) or another URL."""
    digest = hashlib.sha256(f"{job_id}\n{timefmt.format_time(start_time)}\n{url}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def message(job: Mapping[str, Any]) -> bytes:
    """The body POSTed when a job has ended: ``{"type":"job.finished","job":<the row>}``."""
    return orjson.dumps({"type": EVENT_TYPE, "job": job})


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,`` and the base64 of HMAC-SHA256 over ``{id}.{timestamp}.{body}`` (Standard Webhooks)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt, signed at ``timestamp`` (seconds since the epoch)."""
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
    }


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When a failed delivery is tried again: ``first_s`` after the first failure, twice as long after
    each next one, at most ``cap_s``; given up once the next attempt would start more than
    ``give_up_after_s`` after the delivery was queued (when its job ended). SPEC §13: 5 s, 1 h, 24 h."""

    first_s: float = 5.0
    cap_s: float = 3600.0
    give_up_after_s: float = 86400.0

    def delay(self, failures: int) -> float:
        """Seconds from the ``failures``-th failed attempt (from 1) to the next."""
        growth: int = 2 ** min(max(failures - 1, 0), 62)  # typeshed types int ** int as Any
        return min(self.cap_s, self.first_s * growth)

    def next_in(self, failures: int, since_queued_s: float) -> float | None:
        """Seconds until the next attempt, after ``failures`` failed ones, ``since_queued_s`` after the
        delivery was queued; None: give up."""
        wait = self.delay(failures)
        return None if since_queued_s + wait > self.give_up_after_s else wait


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable() and " " not in text


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _authority(scheme: str, authority: str) -> tuple[str | None, int]:
    """The host (None if it is not one) and port of a lowercase ``authority``, as ``parse_url`` takes them."""
    default = _DEFAULT_PORTS[scheme]
    if authority.startswith("["):
        inside, bracket, after = authority[1:].partition("]")
        address = _address(inside) if bracket and "%" not in inside else None
        if not isinstance(address, ipaddress.IPv6Address) or address.compressed != inside:
            return None, default
        if after and not after.startswith(":"):
            return None, default
        host, colon, port = inside, after[:1], after[1:]
    else:
        host, colon, port = authority.partition(":")
        if not _host_name_or_ipv4(host):  # credentials ("user@") included
            return None, default
    if colon and not port:
        return None, default
    if not port:
        return host, default
    if _PORT.fullmatch(port) is None or int(port) > 65535:
        return None, default
    return host, int(port)


def _host_name_or_ipv4(host: str) -> bool:
    """Whether ``host`` is a lowercase host name (the last label not all digits) or a dotted IPv4
    address in its one spelling (so that ``127.1`` or ``2130706433`` pass as neither)."""
    if not 0 < len(host) <= _MAX_HOST_CHARS:
        return False
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        address = _address(host)
        return isinstance(address, ipaddress.IPv4Address) and str(address) == host
    return all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _origin(entry: str) -> Origin:
    """One entry of TRACKER_WEBHOOK_ALLOW; raises ValueError naming it."""
    rule = f"{entry!r} is not an origin: scheme://host[:port], http or https, '*.' allowed before a host name"
    scheme, sep, authority = entry.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS or not _printable(entry) or any(c in authority for c in "/?#"):
        raise ValueError(rule)
    wildcard = authority.startswith("*.")
    authority = authority.removeprefix("*.")
    host, port = _authority(scheme, authority.lower())
    if host is None or (wildcard and _address(host) is not None):
        raise ValueError(rule)
    return Origin(scheme, host, port, wildcard)
