"""The garbage collector in a long-running process: what start-up made is not traversed again."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Hide every object alive now from later collections (``gc.freeze``).

    Call it when a process has imported and built what it keeps for its whole life, just before
    it starts serving. A full collection traverses every tracked object; in ``tracker api`` and
    ``tracker consume`` most of them are the modules, classes and caches of the libraries, which
    never become garbage. Left in view, each full collection stops the process while it walks
    them, a pause every event or request in flight waits out. No collection first: it would pause
    the process just as it begins to serve, to free the few objects of start-up's garbage, which
    are cheaper to keep. The pauses measured either way are in docs/performance.md.
    """
    gc.freeze()
