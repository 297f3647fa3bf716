"""Pause Python's cyclic garbage collector around work that builds many objects.

Importing a 100k-node graph creates millions of objects and no garbage; the collector's scans,
triggered by those allocations and repeated as the heap grows, took over half the load time.
Reference counting still frees everything as usual. On resuming, one young-generation collection
moves the new objects to the old generation at once, instead of the collector discovering them
scan after scan. The command line pauses the collector for its whole (short-lived) job.
"""
from __future__ import annotations

import contextlib
import gc
import os
from typing import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector inside the block; restore its state after, even on error.

    >>> with gc_paused():
    ...     pass
    """
    if os.environ.get("REFOLD_GC_PAUSE", "1") == "0":  # for measuring what the pause buys
        yield
        return
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.collect(1)  # one scan of what the block made, which then ages out of the way
            gc.enable()
