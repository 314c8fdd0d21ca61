"""The gateway's L2 book of one market, fed by ``md.book`` records (``xchg.v1.BookDelta``).

Invariants:

- ``levels`` of each side hold only quantities > 0, and ``prices`` is exactly their keys in
  ascending order (bids are read from the end, asks from the start).
- The book is *synced* once it applied a complete snapshot (every part) and no gap was seen since:
  only a synced book is served. A delta whose ``prev_book_seq`` is not the last applied
  ``book_seq`` (a lost delta) or a split delta whose parts do not follow each other makes it
  unsynced, until the next snapshot record.
- The parts of a split delta (part 0 .. parts-1) are collected and applied together, so the book
  is never observable between two parts; ``book_seq`` moves once, when the last part arrives.
- Records already reflected (``book_seq`` not above the last applied, e.g. read twice) are
  ignored.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from connectors.websocket.checksum import CHECKSUM_LEVELS, book_checksum

BUY, SELL = "buy", "sell"


class SideBook:
    """One side's aggregated levels; ``best_first`` orders them by priority."""

    __slots__ = ("bids", "levels", "prices")

    def __init__(self, bids: bool) -> None:
        self.bids = bids
        self.levels: dict[int, int] = {}
        self.prices: list[int] = []  # ascending, exactly the keys of levels

    def set(self, price: int, qty: int) -> None:
        """The level's new total; qty 0 removes it."""
        if qty > 0:
            if price not in self.levels:
                bisect.insort(self.prices, price)
            self.levels[price] = qty
        elif self.levels.pop(price, None) is not None:
            del self.prices[bisect.bisect_left(self.prices, price)]

    def clear(self) -> None:
        self.levels.clear()
        self.prices.clear()

    def best_first(self, depth: int | None = None) -> list[tuple[int, int]]:
        """The best ``depth`` levels (None: all), best first: highest bid, lowest ask."""
        prices = self.prices
        if self.bids:
            chosen = prices[::-1] if depth is None else prices[: -depth - 1 if depth < len(prices) else None: -1]
        else:
            chosen = prices if depth is None else prices[:depth]
        levels = self.levels
        return [(p, levels[p]) for p in chosen]

    def __len__(self) -> int:
        return len(self.prices)


class Outcome(Enum):
    APPLIED = "applied"  # the book moved to a new book_seq (a delta or a snapshot)
    PENDING = "pending"  # a part of a split delta; more parts to come
    DUPLICATE = "duplicate"  # already reflected; ignored
    GAP = "gap"  # data was lost: the book is no longer synced
    WAITING = "waiting"  # not synced and not a snapshot: ignored until a snapshot


@dataclass(frozen=True)
class Window:
    """The best ``depth`` levels of each side, best first (a client's view of a depth)."""

    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]


@dataclass(frozen=True)
class Applied:
    """What an applied delta changed: ``changes`` as (side, price, new qty); ``before`` holds the
    depth windows that were asked for, taken just before the change."""

    snapshot: bool
    book_seq: int
    prev_book_seq: int
    ts: int
    changes: list[tuple[str, int, int]]
    before: dict[int, Window]


@dataclass
class _Collecting:
    book_seq: int
    prev_book_seq: int
    snapshot: bool
    ts: int
    parts: int
    next_part: int
    changes: list[tuple[str, int, int]] = field(default_factory=list)


class MarketBook:
    """The book of one market; :meth:`apply` takes decoded ``md.book`` records in topic order."""

    def __init__(self, market: str) -> None:
        self.market = market
        self.bids = SideBook(bids=True)
        self.asks = SideBook(bids=False)
        self.book_seq = 0
        self.prev_book_seq = 0
        self.ts = 0
        self.synced = False
        self.gaps = 0
        self._collecting: _Collecting | None = None

    def mark_empty_synced(self) -> None:
        """Start-up found no record of this market at all: an empty book at book_seq 0 is exact."""
        if self.book_seq == 0 and not self.bids and not self.asks:
            self.synced = True

    def side(self, side: str) -> SideBook:
        return self.bids if side == BUY else self.asks

    def window(self, depth: int | None) -> Window:
        return Window(self.bids.best_first(depth), self.asks.best_first(depth))

    def checksum(self) -> int:
        return book_checksum(self.bids.best_first(CHECKSUM_LEVELS), self.asks.best_first(CHECKSUM_LEVELS))

    def _lose(self) -> Outcome:
        self.synced = False
        self._collecting = None
        self.gaps += 1
        return Outcome.GAP

    def apply(self, record: dict[str, Any], depths: frozenset[int] = frozenset()) -> tuple[Outcome, Applied | None]:
        """Apply one record; ``depths``: the depth windows whose state before the change the
        caller wants in :class:`Applied` (to send windowed updates)."""
        part, parts = int(record.get("part", 0)), int(record.get("parts", 1))
        book_seq = int(record["book_seq"])
        changes = [(c["side"], int(c["price"]), int(c["qty"])) for c in record["changes"]]
        collecting = self._collecting
        if part > 0:
            if collecting is None or collecting.book_seq != book_seq or collecting.next_part != part:
                if collecting is None and book_seq <= self.book_seq:
                    return Outcome.DUPLICATE, None
                if not self.synced and collecting is None:
                    return Outcome.WAITING, None
                return self._lose(), None
            collecting.changes.extend(changes)
            collecting.next_part += 1
            if collecting.next_part < collecting.parts:
                return Outcome.PENDING, None
            self._collecting = None
            return Outcome.APPLIED, self._complete(collecting, depths)
        lost = collecting is not None  # a new delta before the last part of the previous one
        if lost:
            self._lose()
        snapshot = bool(record.get("snapshot", False))
        prev = int(record.get("prev_book_seq", 0))
        if not snapshot:
            if not self.synced:
                return (Outcome.GAP if lost else Outcome.WAITING), None
            if book_seq <= self.book_seq:
                return Outcome.DUPLICATE, None
            if prev != self.book_seq:
                return self._lose(), None
        started = _Collecting(book_seq, prev, snapshot, int(record.get("ts", 0)), parts, 1, changes)
        if parts > 1:
            self._collecting = started
            return Outcome.PENDING, None
        return Outcome.APPLIED, self._complete(started, depths)

    def _complete(self, delta: _Collecting, depths: frozenset[int]) -> Applied:
        before = {d: self.window(d) for d in depths}
        if delta.snapshot:
            self.bids.clear()
            self.asks.clear()
        for side, price, qty in delta.changes:
            self.side(side).set(price, qty)
        self.book_seq, self.prev_book_seq, self.ts = delta.book_seq, delta.prev_book_seq, delta.ts
        if delta.snapshot:
            self.synced = True
        return Applied(delta.snapshot, delta.book_seq, delta.prev_book_seq, delta.ts, delta.changes, before)


def window_changes(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (price, qty) updates that turn the window ``before`` into ``after`` (qty 0: the level
    left the window), in the order of ``after`` then the removed ones."""
    old = dict(before)
    out = [(p, q) for p, q in after if old.get(p) != q]
    new = {p for p, _ in after}
    out.extend((p, 0) for p, _ in before if p not in new)
    return out
