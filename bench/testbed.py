"""What every measurement works with: the sizes of the run, its database, broker names and children."""

from __future__ import annotations

import dataclasses
import pathlib
import secrets
from collections.abc import Sequence

from bench import processes
from bench.report import Progress, Run
from bench.services import BenchBroker, BenchDatabase
from tracker.config import ConfigError, Settings

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@dataclasses.dataclass(frozen=True)
class Scale:
    """How much each measurement does; the issue's sizes, and a quick mode that fits in CI."""

    ingest_events: int
    ingest_jobs: int
    ingest_rounds: int  # the bare drain and the tracker alternate this many times
    naive_events: int  # the naive consumer's rate is steady; it is timed over the first of the events
    latency_rate: float  # events per second
    latency_s: float
    latency_rounds: int  # reference and tracker alternate this many times; their samples are pooled
    latency_sample_every: int  # every n-th event is timed until GET shows it
    api_s: float  # per load run
    api_rounds: int  # reference and tracker alternate this many times
    memory_events: int
    memory_warmup_events: int
    scale_small_rows: int
    scale_large_rows: int
    scale_requests: int
    receipts_events: int  # the A/B of ingest with and without receipt times
    receipts_jobs: int
    receipts_rounds: int  # on and off alternate this many times
    lost_rows: int  # the table the lost-job check is timed on
    lost_expired: int  # of them, PENDING and past their deadline or lease
    list_rows: int  # the table the list's first pages are timed on
    list_requests: int  # of each kind: each page of bench.list_filters.PAGES, GET by id
    list_running: int  # of them, the newest, PENDING


FULL = Scale(
    ingest_events=100_000,
    ingest_jobs=20_000,
    ingest_rounds=3,
    naive_events=20_000,
    latency_rate=1000,
    latency_s=40,
    latency_rounds=3,
    latency_sample_every=50,
    api_s=15,
    api_rounds=2,
    memory_events=1_000_000,
    memory_warmup_events=50_000,
    scale_small_rows=10_000,
    scale_large_rows=5_000_000,
    scale_requests=4000,
    receipts_events=100_000,
    receipts_jobs=20_000,
    receipts_rounds=3,
    lost_rows=5_000_000,
    lost_expired=1000,
    list_rows=5_000_000,
    list_requests=2000,
    list_running=50_000,
)
QUICK = Scale(
    ingest_events=10_000,
    ingest_jobs=2_000,
    ingest_rounds=1,
    naive_events=1_500,
    latency_rate=1000,
    latency_s=8,
    latency_rounds=1,
    latency_sample_every=50,
    api_s=4,
    api_rounds=1,
    memory_events=50_000,
    memory_warmup_events=5_000,
    scale_small_rows=10_000,
    scale_large_rows=300_000,
    scale_requests=1000,
    receipts_events=10_000,
    receipts_jobs=2_000,
    receipts_rounds=1,
    lost_rows=300_000,
    lost_expired=1000,
    list_rows=300_000,
    list_requests=500,
    list_running=10_000,
)


class Testbed:
    """The run's database, broker names, settings, output directory and child processes."""

    def __init__(
        self,
        scale: Scale,
        database: BenchDatabase,
        broker: BenchBroker,
        base: Settings,
        out_dir: pathlib.Path,
        progress: Progress,
        run: Run,
    ) -> None:
        self.scale = scale
        self.database = database
        self.broker = broker
        self.out_dir = out_dir
        self.progress = progress
        self.run = run
        self._base = base
        self._children: list[processes.MeasuredChild] = []
        self.metrics_ab = False  # #1 and #3 also run the tracker with metrics off (--metrics-ab)

    @classmethod
    def settings_for(cls, database_url: str, amqp_url: str, out_dir: pathlib.Path) -> Settings:
        """The tracker's settings for this run: its own secret; everything else as shipped."""
        return Settings(
            database_url=database_url,
            amqp_url=amqp_url,
            secret=secrets.token_urlsafe(48),
            secret_file=str(out_dir / "secret"),
            metrics_bind="127.0.0.1:0",  # any free port: never one a tracker on this machine holds
        )

    def settings(self, tag: str, **changes: object) -> Settings:
        """Settings with broker names of their own (declared now), and any other ``changes``."""
        settings = self._base.with_(**self.broker.names(tag), **changes)
        self.broker.declare(settings)
        return settings

    def start(
        self, name: str, command: Sequence[str], settings: Settings, capture_stdout: bool = False
    ) -> processes.MeasuredChild:
        """A child process with the tracker's environment for ``settings``, stopped at the end of the run."""
        child = processes.MeasuredChild(
            command,
            processes.tracker_environment(settings),
            self.out_dir / "logs" / f"{name}.log",
            capture_stdout=capture_stdout,
        ).start()
        self._children.append(child)
        return child

    def stop_all(self) -> None:
        for child in self._children:
            child.stop()
        self._children.clear()


def settings_changes(assignments: list[str]) -> dict[str, object]:
    """``FIELD=VALUE`` pairs as Settings changes, read the way TRACKER_FIELD would be; raises ConfigError."""
    env, fields = {}, []
    for assignment in assignments:
        field, sep, value = assignment.partition("=")
        if not sep or field not in Settings.__dataclass_fields__:
            raise ConfigError(f"--set takes FIELD=VALUE with a field of tracker.config.Settings, not {assignment!r}")
        env[f"TRACKER_{field.upper()}"] = value
        fields.append(field)
    configured = Settings.from_env(env)
    return {field: getattr(configured, field) for field in fields}
