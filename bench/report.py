"""What a run found: one JSON line per measurement, progress on stderr, and docs/performance.md."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import pathlib
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import orjson

BEGIN = "<!-- bench:begin (written by `make bench`; edit around this block, not inside it) -->"
END = "<!-- bench:end -->"


@dataclasses.dataclass(frozen=True)
class Result:
    """One measurement: the tracker's figure beside the reference measured in the same run."""

    measurement: str  # the number and name, e.g. "1 ingest"
    figure: str  # what the numbers are
    unit: str
    project: float
    reference: float | None
    reference_is: str | None
    target: str
    met: bool | None  # None when the measurement has no target
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.reference == 0:
            return None
        return self.project / self.reference

    def as_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "measurement": self.measurement,
            "figure": self.figure,
            "unit": self.unit,
            "project": _rounded(self.project),
            "reference": _rounded(self.reference),
            "reference_is": self.reference_is,
            "ratio": None if ratio is None else round(ratio, 3),
            "target": self.target,
            "met": self.met,
            **self.details,
        }

    def line(self) -> str:
        return orjson.dumps(self.as_json()).decode()


def _rounded(value: float | None) -> float | None:
    if value is None:
        return None
    return round(value, 3) if abs(value) < 100 else round(value, 1)


class Progress:
    """Progress on stderr (stdout carries only the JSON lines), at most one line per key every few seconds."""

    def __init__(self, stream: TextIO = sys.stderr, every_s: float = 2.0) -> None:
        self._stream = stream
        self._every_s = every_s
        self._started = time.monotonic()
        self._last: dict[str, float] = {}

    def say(self, text: str) -> None:
        print(f"[bench {time.monotonic() - self._started:7.1f} s] {text}", file=self._stream, flush=True)

    def tick(self, key: str, text: str) -> None:
        """Like ``say``, unless ``key`` was said less than a few seconds ago."""
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self._every_s:
            self._last[key] = now
            self.say(text)


@dataclasses.dataclass
class Run:
    """Everything docs/performance.md shows about one run."""

    command: str
    mode: str
    started: dt.datetime
    machine: dict[str, Any]
    results: list[Result] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    charts: list[str] = dataclasses.field(default_factory=list)  # mermaid blocks
    finished: dt.datetime | None = None
    load_after: tuple[float, float, float] | None = None


def describe_machine(postgresql: str, rabbitmq: str, load_generator: str) -> dict[str, Any]:
    """The machine as the report names it: CPU, cores, memory, kernel, versions, load now."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": postgresql,
        "rabbitmq": rabbitmq,
        "load_generator": load_generator,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def summary(results: Sequence[Result]) -> str:
    """The closing lines on stderr: each target, met or missed."""
    lines = ["targets:"]
    for result in results:
        if result.met is None:
            continue
        verdict = "met   " if result.met else "MISSED"
        lines.append(f"  {verdict} {result.measurement}: {_figures(result)} (target {result.target})")
    met = sum(1 for r in results if r.met)
    judged = sum(1 for r in results if r.met is not None)
    lines.append(f"  {met} of {judged} targets met")
    return "\n".join(lines)


def _figures(result: Result) -> str:
    text = f"{_number(result.project)} {result.unit}"
    if result.reference is not None:
        text += f" vs {_number(result.reference)} {result.unit}"
        if result.ratio is not None:
            text += f" = {result.ratio:.2f}x"
    return text


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def write_docs(path: pathlib.Path, run: Run) -> None:
    """Put the run's block into ``path``, keeping whatever surrounds an earlier block."""
    block = f"{BEGIN}\n{_block(run)}\n{END}"
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            head, _, rest = text.partition(BEGIN)
            _, _, tail = rest.partition(END)
            path.write_text(head + block + tail)
            return
        path.write_text(text.rstrip("\n") + "\n\n" + block + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Performance\n\n" + block + "\n")


def _block(run: Run) -> str:
    machine = run.machine
    took = (run.finished - run.started).total_seconds() if run.finished else None
    out = [
        f"## Last run: {run.started:%Y-%m-%d %H:%M} UTC ({run.mode})",
        "",
        f"Command: `{run.command}`" + (f" — took {took / 60:.1f} min" if took else ""),
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
        f"{machine['kernel']}; Python {machine['python']}; {machine['postgresql']}; "
        f"RabbitMQ {machine['rabbitmq']}; load generator: {machine['load_generator']}.",
        "",
        f"Load average (1, 5, 15 min) before: {_triple(machine['load_average_before'])}"
        + (f", after: {_triple(run.load_after)}" if run.load_after else "")
        + ". The tracker, RabbitMQ, PostgreSQL and the load generators all share these cores; "
        "other work on the machine moves the absolute figures, which is why each one stands "
        "beside a reference measured minutes apart in the same run.",
        "",
        "| # | measurement | tracker | reference | ratio | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in run.results:
        number, _, name = r.measurement.partition(" ")
        verdict = "" if r.met is None else ("met" if r.met else "**missed**")
        reference = "—" if r.reference is None else f"{_number(r.reference)} {r.unit} ({r.reference_is})"
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}"
        out.append(
            f"| {number} | {name}: {r.figure} | {_number(r.project)} {r.unit} | {reference} "
            f"| {ratio} | {r.target} | {verdict} |"
        )
    if run.notes:
        out += ["", *(f"- {note}" for note in run.notes)]
    for chart in run.charts:
        out += ["", chart]
    out += ["", "The JSON lines of this run:", "", "```json", *(r.line() for r in run.results), "```"]
    return "\n".join(out)


def _triple(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def line_chart(title: str, x_label: str, y_label: str, series: Sequence[Sequence[float]]) -> str:
    """A mermaid xychart of one or more lines over the same x steps (GitHub renders it).

    A shorter line is continued at zero: the chart spreads every line over the whole axis.
    """
    length = max((len(s) for s in series), default=0)
    series = [list(s) + [0.0] * (length - len(s)) for s in series]
    top = max((max(s) for s in series if s), default=1.0)
    lines = [
        "```mermaid",
        "xychart-beta",
        f'    title "{title}"',
        f'    x-axis "{x_label}" 0 --> {max(length - 1, 1)}',
        f'    y-axis "{y_label}" 0 --> {_nice_ceiling(top)}',
    ]
    lines += [f"    line [{', '.join(f'{v:.0f}' for v in s)}]" for s in series if s]
    lines.append("```")
    return "\n".join(lines)


def bar_chart(title: str, y_label: str, bars: Sequence[tuple[str, float]]) -> str:
    """A mermaid bar chart, one bar per label."""
    top = max((v for _, v in bars), default=1.0)
    labels = ", ".join(f'"{label}"' for label, _ in bars)
    return "\n".join(
        [
            "```mermaid",
            "xychart-beta",
            f'    title "{title}"',
            f"    x-axis [{labels}]",
            f'    y-axis "{y_label}" 0 --> {_nice_ceiling(top)}',
            f"    bar [{', '.join(f'{v:.1f}' for _, v in bars)}]",
            "```",
        ]
    )


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    return float((int(value / magnitude) + 1) * magnitude)
