"""Independent calls made at the same time: the promotion's HEADs of its files, and its copies.

Each S3 request is a network round trip that the function only waits on; a manifest's two files are checked,
and copied, side by side instead of one after the other. Each call runs in a copy of the caller's context
(``contextvars``: the log keys of the promotion it belongs to), and through ``carry``, which the function's
shell uses to put the caller's trace entity in the worker thread (X-Ray keeps it per thread).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")

Carry = Callable[[Callable[[], T]], Callable[[], T]]


def _as_is(call: Callable[[], T]) -> Callable[[], T]:
    return call


class ThreadedCalls:
    """Runs independent calls on a small pool of threads kept for the life of the process."""

    def __init__(self, max_workers: int = 4, carry: Carry | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ckpt-call")
        self._carry = carry or _as_is

    def all(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Every call's result, in order. Returns only once every call has ended, so none is still running
        when the caller moves on (a copy must not outlive the lock it was made under); if calls raised, the
        first one's exception in order is raised, as running them one after the other would have."""
        if len(calls) <= 1:
            return [call() for call in calls]
        futures: list[Future[T]] = [
            self._pool.submit(contextvars.copy_context().run, self._carry(call)) for call in calls
        ]
        wait(futures)
        return [future.result() for future in futures]
