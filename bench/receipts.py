"""`tracker consume` for the benchmark's A/B of receipt times: the same consumer, leases renewed or not.

    python -m bench.receipts on|off

Reads its settings from the environment as `tracker consume` does, and runs the same Consumer
over ``open_job_store(engine, record_receipts=...)``; without the lost-job check, which the A/B
is not about. Both sides of the A/B run this, so they differ in the flag only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from consumers.amqp import Consumer
from consumers.status import StatusProjector
from tracker import gcfreeze
from tracker.config import Settings
from tracker.store import make_engine, open_job_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receipts", description=__doc__)
    parser.add_argument("receipts", choices=["on", "off"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    settings = Settings.from_env(os.environ)
    engine = make_engine(settings.database_url, pool_pre_ping=False)
    store = open_job_store(engine, record_receipts=args.receipts == "on")
    consumer = Consumer(settings, StatusProjector(store))
    consumer.install_signal_handlers()
    gcfreeze.freeze_startup_objects()
    try:
        consumer.run()
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
