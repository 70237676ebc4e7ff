"""Settings read once from the environment: frozen, validated, no I/O."""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from typing import Any

from tracker import webhooks
from tracker.errors import ConfigError
from tracker.leases import DEFAULT_HEARTBEAT_TIMEOUT_S, DEFAULT_JOB_TIMEOUT_S, MAX_TIMEOUT_S


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the processes need to know, with the SPEC §4 defaults."""

    database_url: str = "sqlite:///tracker.db"
    amqp_url: str = "amqp://guest:guest@localhost:5672/%2F"  # or several, comma-separated (SPEC §10)
    secret: str | None = dataclasses.field(default=None, repr=False)
    secret_file: str = ".tracker_secret"
    bind: str = "127.0.0.1:8000"

    # broker topology (SPEC §3; names are configurable)
    exchange: str = "async_status"
    queue: str = "async_status.events"
    dead_exchange: str = "async_status.dlx"
    dead_queue: str = "async_status.dead"
    control_exchange: str = "async_status.control"  # cancel messages to workers (SPEC §12)

    # consumer batching
    batch_size: int = 500
    flush_ms: int = 10
    prefetch: int = 2500
    health_file: str | None = None  # touched by the consumer's loop, for container health checks

    # API
    workers: int = 2
    api_threads: int = 256  # requests each worker serves at once (held waits and slow clients included)
    # requests each worker holds for `Prefer: wait` at once (None: max_waits), and one user's of them
    api_max_waits: int | None = None
    api_max_waits_per_user: int | None = None
    # SPEC §13 streams each worker holds at once (each an open socket, not a thread: api/pump.py)
    api_max_streams: int = 4096
    api_read_timeout_s: float = 10.0  # a request's line, headers and body must arrive within this
    token_ttl_s: int = 6 * 3600
    secure_cookies: bool = False
    # The origins (scheme://host[:port], comma-separated) the dashboard is served from, where a
    # cookie session may act from; "": the request's own scheme and Host (api.middleware.SessionGuard).
    public_origin: str = ""
    user_cache_s: float = 30.0
    # failed logins within the lockout before a lockout (tracker.users.LoginLimits): of one user from
    # one address; of any users from one address; of one user from any addresses (0: no such limit)
    login_max_failures: int = 5
    login_max_failures_per_address: int = 50
    login_max_failures_per_user: int = 20
    login_lockout_s: int = 60
    row_cache_rows: int = 100_000  # job rows each API worker keeps (PostgreSQL only; 0: none)

    # every process
    log_format: str = "text"  # or "json": one JSON object per line (tracker.logs)
    # leases and retention (SPEC §6)
    job_timeout_s: int = DEFAULT_JOB_TIMEOUT_S  # a new job's deadline when its POST names none
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S  # a new job's lease when its POST names none; 0: none
    reap_interval_s: float = 5.0  # how often each consumer checks for lost jobs (one at a time does)
    cancel_grace_s: int = 60  # a job still PENDING this long after its cancel request is failed (SPEC §12)
    retention_days: float = 0.0  # finished jobs older than this are deleted by the same check; 0: kept
    # observability (SPEC §8): a consumer's /metrics, /healthz, /readyz ("": none); metrics off
    # (nothing counted, /metrics not served) only to measure what they cost
    metrics_bind: str = "127.0.0.1:9464"
    metrics: bool = True
    # kinds with a label value of their own in tracker_job_duration_seconds (SPEC §11); the rest: other
    metrics_max_kinds: int = 50
    # webhooks (SPEC §13): the origins a job's notify_url may name ("": webhooks off), the signing
    # secret (whsec_ and base64; needed when any origin is allowed), how many a consumer sends at
    # once, and the retry pace: SPEC §13's, changed only by tests
    webhook_allow: str = ""
    webhook_secret: str | None = dataclasses.field(default=None, repr=False)
    webhook_concurrency: int = 16
    webhook_retry_first_s: float = webhooks.RetryPolicy.first_s
    webhook_retry_max_s: float = webhooks.RetryPolicy.cap_s
    webhook_give_up_s: float = webhooks.RetryPolicy.give_up_after_s

    @property
    def max_waits(self) -> int:
        """How many requests each API worker holds at once for ``Prefer: wait`` (SPEC §7):
        ``api_max_waits``, else three quarters of its threads, so that a quarter stay for
        everything else (plain requests, slow clients) however many wait."""
        return self.api_max_waits if self.api_max_waits is not None else self.api_threads * 3 // 4

    @property
    def max_waits_per_user(self) -> int:
        """How many of those one user's requests may be: ``api_max_waits_per_user``, else three
        quarters of ``max_waits``, so that no one user takes every wait a worker holds."""
        if self.api_max_waits_per_user is not None:
            return self.api_max_waits_per_user
        return self.max_waits * 3 // 4

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The broker addresses of ``amqp_url``: one, or the nodes of a cluster (SPEC §10)."""
        return split_amqp_urls(self.amqp_url)

    @property
    def public_origins(self) -> tuple[str, ...]:
        """The origins of ``public_origin``, each as ``normalized_origin`` gives it (none when unset).

        Raises ConfigError for a value that is not an http(s) origin.
        """
        origins = []
        for part in self.public_origin.split(","):
            if not part.strip():
                continue
            origin = normalized_origin(part)
            if origin is None:
                raise ConfigError(
                    f"TRACKER_PUBLIC_ORIGIN must be origins such as https://tracker.example.com "
                    f"(scheme, host and port only), separated by commas, not {part.strip()!r}"
                )
            origins.append(origin)
        return tuple(origins)

    @property
    def webhook_origins(self) -> webhooks.AllowList:
        """The origins of ``webhook_allow``; empty while webhooks are off. Raises ConfigError."""
        try:
            return webhooks.AllowList.parse(self.webhook_allow)
        except ValueError as exc:
            raise ConfigError(f"TRACKER_WEBHOOK_ALLOW: {exc}") from None

    @property
    def webhook_key(self) -> bytes | None:
        """The key of ``webhook_secret``; None when it is not set. Raises ConfigError."""
        if self.webhook_secret is None:
            return None
        try:
            return webhooks.parse_secret(self.webhook_secret)
        except ValueError as exc:
            raise ConfigError(f"TRACKER_WEBHOOK_SECRET {exc}") from None

    @property
    def webhook_retries(self) -> webhooks.RetryPolicy:
        return webhooks.RetryPolicy(self.webhook_retry_first_s, self.webhook_retry_max_s, self.webhook_give_up_s)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``env`` (pass ``os.environ``); unset names keep their defaults.

        Raises ConfigError naming the variable when a value cannot be used.
        """
        # Each value has its field's type (_convert follows field.type), which mypy cannot see.
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = "TRACKER_" + field.name.upper()
            raw = env.get(name)
            if raw is None or (raw == "" and field.name not in _EMPTY_MEANS_NONE):
                continue
            values[field.name] = _convert(name, raw, field.type)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ConfigError if a value is out of range."""
        positive = (
            "batch_size",
            "flush_ms",
            "prefetch",
            "workers",
            "token_ttl_s",
            "login_max_failures",
            "login_lockout_s",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"TRACKER_{name.upper()} must be at least 1")
        if not 1 <= self.api_threads <= 10_000:
            raise ConfigError("TRACKER_API_THREADS must be an integer from 1 to 10000")
        if not 0 <= self.max_waits < self.api_threads:
            raise ConfigError("TRACKER_API_MAX_WAITS must be an integer from 0 to TRACKER_API_THREADS - 1")
        if not 0 <= self.api_max_streams <= 1_000_000:
            raise ConfigError("TRACKER_API_MAX_STREAMS must be an integer from 0 to 1000000")
        if self.max_waits_per_user < 0:
            raise ConfigError("TRACKER_API_MAX_WAITS_PER_USER must be at least 0")
        if not 0.1 <= self.api_read_timeout_s <= 3600:
            raise ConfigError("TRACKER_API_READ_TIMEOUT_S must be from 0.1 to 3600 seconds")
        check_amqp_urls(self.amqp_url)
        self.public_origins  # noqa: B018 - raises ConfigError for an origin it cannot read
        if self.row_cache_rows < 0:
            raise ConfigError("TRACKER_ROW_CACHE_ROWS must be at least 0")
        for name in ("login_max_failures_per_address", "login_max_failures_per_user"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TRACKER_{name.upper()} must be at least 0 (0: no such limit)")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"TRACKER_LOG_FORMAT must be text or json, not {self.log_format!r}")
        if not 1 <= self.job_timeout_s <= MAX_TIMEOUT_S:
            raise ConfigError(f"TRACKER_JOB_TIMEOUT_S must be an integer from 1 to {MAX_TIMEOUT_S}")
        if not 0 <= self.heartbeat_timeout_s <= MAX_TIMEOUT_S:
            raise ConfigError(f"TRACKER_HEARTBEAT_TIMEOUT_S must be an integer from 0 (none) to {MAX_TIMEOUT_S}")
        if not 0.05 <= self.reap_interval_s <= 3600:
            raise ConfigError("TRACKER_REAP_INTERVAL_S must be from 0.05 to 3600 seconds")
        if not 1 <= self.cancel_grace_s <= MAX_TIMEOUT_S:
            raise ConfigError(f"TRACKER_CANCEL_GRACE_S must be an integer from 1 to {MAX_TIMEOUT_S}")
        if not 0 <= self.retention_days <= 36500:
            raise ConfigError("TRACKER_RETENTION_DAYS must be from 0 (keep for ever) to 36500")
        if self.prefetch < self.batch_size:
            raise ConfigError("TRACKER_PREFETCH must be at least TRACKER_BATCH_SIZE")
        if not 0 <= self.metrics_max_kinds <= 1000:
            raise ConfigError("TRACKER_METRICS_MAX_KINDS must be an integer from 0 to 1000")
        self._check_webhooks()
        for name in ("bind", "metrics_bind"):
            address = getattr(self, name)
            host, sep, port = address.rpartition(":")
            if (address or name == "bind") and (not sep or not host or not port.isdigit()):
                raise ConfigError(f"TRACKER_{name.upper()} must be HOST:PORT, not {address!r}")

    def _check_webhooks(self) -> None:
        if self.webhook_origins and self.webhook_secret is None:
            raise ConfigError("TRACKER_WEBHOOK_SECRET must be set when TRACKER_WEBHOOK_ALLOW is")
        self.webhook_key  # noqa: B018 - parsed to be checked
        if not 1 <= self.webhook_concurrency <= 1000:
            raise ConfigError("TRACKER_WEBHOOK_CONCURRENCY must be an integer from 1 to 1000")
        retries = self.webhook_retries
        if not 0 < retries.first_s <= retries.cap_s:
            raise ConfigError("TRACKER_WEBHOOK_RETRY_FIRST_S must be above 0 and at most TRACKER_WEBHOOK_RETRY_MAX_S")
        if not 0 < retries.give_up_after_s <= 30 * 86400:
            raise ConfigError("TRACKER_WEBHOOK_GIVE_UP_S must be above 0 and at most 2592000 (30 days)")

    def to_env(self) -> dict[str, str]:
        """The environment variables that ``from_env`` reads back into these settings.

        For starting tracker processes configured like this one; unset (None) fields are left out.
        """
        env = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                text = ("true" if value else "false") if isinstance(value, bool) else str(value)
                env["TRACKER_" + field.name.upper()] = text
        return env

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the CLI use this)."""
        return dataclasses.replace(self, **changes)


def split_amqp_urls(value: str) -> tuple[str, ...]:
    """The addresses of a TRACKER_AMQP_URL value: split at commas, spaces around each dropped.

    A comma inside one address (say, in a password) must be written ``%2C``.
    """
    return tuple(part.strip() for part in value.split(","))


def check_amqp_urls(value: str) -> None:
    """Raise ConfigError unless every address of ``value`` is an amqp:// or amqps:// URL with a host.

    The error names the setting and the address by its place in the list, with any password
    masked: the message may well be logged.
    """
    urls = split_amqp_urls(value)
    for place, url in enumerate(urls, start=1):
        where = f"TRACKER_AMQP_URL address {place} of {len(urls)}" if len(urls) > 1 else "TRACKER_AMQP_URL"
        if not url:
            raise ConfigError(f"{where} is empty: give amqp:// or amqps:// URLs separated by commas")
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - urlsplit checks the port only when it is asked for
        except ValueError:
            # Not the error's own text: on a password with a "/" in it, it quotes part of it.
            raise ConfigError(f"{where} is not a valid URL (its host or port): {redact_url(url)!r}") from None
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigError(f"{where} must be an amqp:// or amqps:// URL, not {redact_url(url)!r}")
        if not parts.hostname:
            raise ConfigError(f"{where} names no host: {redact_url(url)!r}")


def normalized_origin(text: str) -> str | None:
    """An http(s) origin as browsers send it in ``Origin``: ``scheme://host[:port]`` in lower case,
    without the scheme's default port. None when ``text`` is no such origin (``null``, a path, …)."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host or parts.username is not None or parts.password is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address, whose brackets urlsplit drops
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def redact_url(url: str) -> str:
    """``url`` with the password, if it has one, replaced by ``***``: fit for a log or an error."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}"


# Set to the empty string, these turn something off rather than take their default.
_EMPTY_MEANS_NONE = frozenset({"metrics_bind"})


def _convert(name: str, raw: str, kind: object) -> object:
    kind = str(kind)
    if kind.startswith("int"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if kind.startswith("float"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if kind.startswith("bool"):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, not {raw!r}")
    return raw
