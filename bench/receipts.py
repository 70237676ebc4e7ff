"""`tracker consume` for the benchmark's A/Bs: the same consumer, leases renewed or not, timeline kept or not.

    python -m bench.receipts on|off [--timeline on|off]

Reads its settings from the environment as `tracker consume` does, and runs the same Consumer
over ``open_job_store(engine, record_receipts=..., keep_timeline=...)``; without the lost-job
check, which the A/Bs are not about. Both sides of an A/B run this, so they differ in one flag only.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from consumers.amqp import Consumer
from consumers.status import StatusProjector
from tracker.config import Settings
from tracker.store import make_engine, open_job_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receipts", description=__doc__)
    parser.add_argument("receipts", choices=["on", "off"])
    parser.add_argument("--timeline", choices=["on", "off"], default="on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    settings = Settings.from_env(os.environ)
    engine = make_engine(settings.database_url, pool_pre_ping=False)
    store = open_job_store(engine, record_receipts=args.receipts == "on", keep_timeline=args.timeline == "on")
    consumer = Consumer(settings, StatusProjector(store))
    consumer.install_signal_handlers()
    gc.freeze()  # as tracker consume does
    try:
        consumer.run()
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
