"""What a function does once per execution environment, before its first event."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def long_lived_imports() -> Iterator[None]:
    """Import a function's modules with the cyclic garbage collector paused, then freeze what they made.

    A cold start imports some 800 modules whose objects live as long as the execution environment: the
    collections their allocations trigger free nothing and cost about an eighth of the INIT (``make bench``).
    Frozen, those objects are also left out of every later collection. The collector's state is restored,
    so a nested use (one function importing another's handler) keeps it paused until the outer one ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
