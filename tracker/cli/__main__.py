"""``python -m tracker.cli``: the ``tracker`` command, as ``tracker run`` starts its children."""

import sys

from tracker.cli import main

sys.exit(main())
