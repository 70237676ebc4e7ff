"""Render the figures the fault scenarios wrote (JSON lines) as the table of docs/reliability.md.

    .venv/bin/python -m tests.faults.report                              # print the table
    .venv/bin/python -m tests.faults.report --write docs/reliability.md  # replace it in the doc
    .venv/bin/python -m tests.faults.report bounded.jsonl long.jsonl --write docs/reliability.md

The newest line of each scenario and scale wins, so run the tests, then this.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from tests.faults.stream import report_path

BEGIN = "<!-- figures:begin -->"
END = "<!-- figures:end -->"
_COLUMNS = ("published", "confirmed", "applied", "lost", "wrong", "dead")


def latest(lines: list[str]) -> list[dict[str, object]]:
    """The newest figures per (scale, scenario), bounded runs first, then by scenario."""
    newest: dict[tuple[str, str], dict[str, object]] = {}
    for line in lines:
        if line.strip():
            figures = json.loads(line)
            newest[(str(figures["scale"]), str(figures["scenario"]))] = figures
    return [newest[key] for key in sorted(newest, key=lambda k: (k[0] != "bounded", k))]


def table(rows: list[dict[str, object]]) -> str:
    header = ["Scenario", "Scale", "What was done", "What was checked", *_COLUMNS, "Seconds", "Run at (UTC)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row["scenario"],
            row["scale"],
            row["done"],
            row["checked"],
            *(row[c] for c in _COLUMNS),
            row["seconds"],
            str(row["finished_at"])[:19].replace("T", " "),
        ]
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "reports",
        nargs="*",
        type=pathlib.Path,
        default=[report_path()],
        metavar="REPORT",
        help="JSON lines the tests wrote (default: $TRACKER_FAULTS_REPORT or its default)",
    )
    parser.add_argument(
        "--write", type=pathlib.Path, metavar="DOC", help=f"replace the text between {BEGIN} and {END} in DOC"
    )
    args = parser.parse_args(argv)
    rendered = table(latest([line for path in args.reports for line in path.read_text(encoding="utf-8").splitlines()]))
    if args.write is None:
        print(rendered)
        return 0
    doc = args.write.read_text(encoding="utf-8")
    before, begin, rest = doc.partition(BEGIN)
    _old, end, after = rest.partition(END)
    if not begin or not end:
        print(f"{args.write}: no {BEGIN} … {END} section", file=sys.stderr)
        return 1
    args.write.write_text(f"{before}{BEGIN}\n{rendered}\n{END}{after}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
