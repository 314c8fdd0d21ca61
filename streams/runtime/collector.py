"""Python's cyclic garbage collector, set for the long-running stream processes.

The engine, the sink and the candle processor allocate a container object (dict, tuple) for
nearly every record, and keep many of them alive for a batch. With CPython's default thresholds
(a young collection every 700 net allocations) the collector ran thousands of times per second and
re-traversed the batch in flight each time: decoding a batch of 100,000 trades cost 7-10 µs per
trade with the default and 5.6 µs with a 50,000 threshold (``xchg bench sink`` shows the effect).

Reference counting still frees almost everything at once; only reference cycles wait longer for
collection, which these processes do not create at a rate that matters.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 50_000  # net allocations between young collections (CPython default: 700)


def tune_for_streaming() -> None:
    """Move everything allocated so far (modules, settings, clients) out of the collector's way and
    collect young objects every ``YOUNG_THRESHOLD`` allocations instead of 700."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block (a load generator must keep its schedule: a full
    collection over its bookkeeping would stall it for 100 ms and more). Collection resumes
    after the block, as it was before it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
