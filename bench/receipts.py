"""`tracker consume` for the benchmark's A/Bs: the same consumer, leases renewed or not, timeline kept or not.

    python -m bench.receipts on|off [--timeline on|off]

Reads its settings from the environment as `tracker consume` does, and runs the same Consumer
over the product's PostgreSQL store (`on`) or one of its A/B sides in `bench.store_variants`
(`off`: without receipts; `off --timeline off`: without receipts, keeping only the history);
without the lost-job check, which the A/Bs are not about. Both sides of an A/B run this, so they
differ in the one part of the merge statement the A/B is about.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from bench.store_variants import HistoryOnly, WithoutReceipts
from consumers.amqp import Consumer
from consumers.status import StatusProjector
from tracker.config import Settings
from tracker.store import make_engine
from tracker.store.postgresql import PostgresJobStore

# By (receipts, timeline). The timeline's A/B runs both its sides without receipts, as it always has.
_STORES: dict[tuple[str, str], type[PostgresJobStore]] = {
    ("on", "on"): PostgresJobStore,
    ("off", "on"): WithoutReceipts,
    ("off", "off"): HistoryOnly,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receipts", description=__doc__)
    parser.add_argument("receipts", choices=["on", "off"])
    parser.add_argument("--timeline", choices=["on", "off"], default="on")
    args = parser.parse_args(argv)
    store_class = _STORES.get((args.receipts, args.timeline))
    if store_class is None:
        parser.error("--timeline off runs without receipts: `off --timeline off`")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    settings = Settings.from_env(os.environ)
    engine = make_engine(settings.database_url, pool_pre_ping=False)
    consumer = Consumer(settings, StatusProjector(store_class(engine)))
    consumer.install_signal_handlers()
    gc.freeze()  # as tracker consume does
    try:
        consumer.run()
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
