"""Sequence checking for consumers of the engine's output topics (sinks, ``xchg verify stream``).

Each output stream has a per-market counter that must advance by exactly one:
``orders.events`` → ``seq``, ``trades`` → ``trade_id``. ``SequenceTracker.observe`` classifies
every record as ``ok``, ``duplicate`` (a counter already seen: a replayed record, to skip) or
``gap`` (a counter skipped: records were lost, to report), and keeps the per-market last value.
``md.book`` deltas are chained instead (``prev_book_seq`` must equal the previous delta's
``book_seq`` unless the delta is a full ``snapshot``); ``BookChain`` checks that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Verdict(Enum):
    OK = "ok"
    DUPLICATE = "duplicate"
    GAP = "gap"


@dataclass(frozen=True)
class Gap:
    market: str
    expected: int
    got: int


@dataclass
class SequenceTracker:
    """Per-market gap-free counter check; ``start`` is the value before the first record."""

    start: int = 0
    last: dict[str, int] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    duplicates: int = 0
    seen: int = 0

    def observe(self, market: str, value: int) -> Verdict:
        self.seen += 1
        last = self.last.get(market, self.start)
        if value == last + 1:
            self.last[market] = value
            return Verdict.OK
        if value <= last:
            self.duplicates += 1
            return Verdict.DUPLICATE
        self.gaps.append(Gap(market, last + 1, value))
        self.last[market] = value
        return Verdict.GAP

    def resume(self, market: str, last: int) -> None:
        """Continue from a known last value (e.g. the highest one already stored in a database)."""
        self.last[market] = last

    @property
    def clean(self) -> bool:
        return not self.gaps and not self.duplicates


@dataclass
class BookChain:
    """``md.book``: each delta's ``prev_book_seq`` must be the previous delta's ``book_seq``; the
    parts of a split delta (``part`` 1 .. ``parts``-1) must follow its part 0 in order."""

    last: dict[str, int] = field(default_factory=dict)
    breaks: list[Gap] = field(default_factory=list)
    snapshots: int = 0
    # Per market: (book_seq, next part) of a split delta whose later parts are still to come.
    pending: dict[str, tuple[int, int]] = field(default_factory=dict)

    def observe(self, market: str, book_seq: int, prev_book_seq: int, snapshot: bool,
                part: int = 0, parts: int = 1) -> Verdict:
        expected = self.pending.pop(market, None)
        if part > 0:
            if expected == (book_seq, part):
                if part + 1 < parts:
                    self.pending[market] = (book_seq, part + 1)
                return Verdict.OK
            done = self.last.get(market, 0)
            if expected is None and book_seq <= done:
                return Verdict.DUPLICATE
            self.breaks.append(Gap(market, done, prev_book_seq))
            return Verdict.GAP
        if expected is not None:  # a new delta before the previous one's last part
            self.breaks.append(Gap(market, expected[0], prev_book_seq))
        if parts > 1:
            self.pending[market] = (book_seq, 1)
        if snapshot:
            self.snapshots += 1
            self.last[market] = book_seq
            return Verdict.OK
        last = self.last.get(market)
        if last is not None and prev_book_seq != last:
            if book_seq <= last:
                self.pending.pop(market, None)
                return Verdict.DUPLICATE
            self.breaks.append(Gap(market, last, prev_book_seq))
            self.last[market] = book_seq
            return Verdict.GAP
        self.last[market] = book_seq
        return Verdict.OK
