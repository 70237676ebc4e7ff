"""The garbage collector in a long-running process: what start-up made is not traversed again."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Hide every object alive now from later collections (``gc.freeze``).

    Call it when a process has imported and built what it keeps for its whole life, just before
    it starts serving. A full collection traverses every tracked object; in ``tracker api`` and
    ``tracker consume`` most of them are the modules, classes and caches of the libraries, which
    never become garbage. Left in view, each full collection stopped the process for 65 to 80 ms
    on a 2-core machine, a pause every event or request in flight waited out (docs/performance.md,
    #2). No collection first: one took 56 to 148 ms just as the process began to serve, to free
    the 30 to 270 objects of start-up's garbage, which are cheaper to keep.
    """
    gc.freeze()
