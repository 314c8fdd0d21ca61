"""Engine errors. A rejected command is an event, never an exception: these are for bugs."""

from __future__ import annotations


class InvariantBreach(Exception):
    """An engine invariant does not hold (crossed book, zero-quantity resting order, bad index).

    Raised fail-fast by ``Engine.check_invariants`` and by the cheap checks on the hot path; the
    engine's state must be considered corrupt afterwards.
    """


class SnapshotError(ValueError):
    """A snapshot cannot be restored (malformed, other format version, or another market)."""
