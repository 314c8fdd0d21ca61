"""The pure decisions of the market-data client (``connectors/websocket/client.py``).

- :class:`LocalBook`: a client's L2 book of one market, kept by the protocol's rules
  (``docs/websocket-protocol.md`` §3 ``book``). It is *valid* (``book_seq`` not None) only from a
  snapshot on, and as long as every update chained (``prev_book_seq`` == its ``book_seq``) and
  its checksum matched after each message. Any other message invalidates it, and the verdict
  says why: the caller resubscribes and rebuilds it from the next snapshot (the Binance "manage a
  local order book" procedure). Prices and quantities are integers; a level with qty 0 is never
  held (``SideBook`` of the gateway is reused, so both sides order levels the same way).
- :func:`heartbeat_shows_loss`: a heartbeat whose ``book_seq`` is above the valid book's means a
  message was lost (the server queues a heartbeat after everything queued before it).
- :class:`TradeSequence`: trade ids are gap-free per market; it accepts each id once, in order,
  and names the ids missing before a new one (filled from REST by the caller).
- :func:`backoff_delay`: capped exponential backoff with full jitter.

No I/O, no clock: the randomness of the jitter is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from connectors.websocket.book import SideBook
from connectors.websocket.checksum import CHECKSUM_LEVELS, book_checksum

Level = tuple[int, int]


class Verdict(Enum):
    APPLIED = "applied"  # the book moved to the message's book_seq and its checksum matched
    GAP = "gap"  # an update's prev_book_seq is not the book's book_seq: data was lost
    CHECKSUM_MISMATCH = "checksum_mismatch"  # after applying, the book's checksum differs
    NO_SNAPSHOT = "no_snapshot"  # an update arrived while the book was not valid
    MALFORMED = "malformed"  # a field is missing or not an integer where one is required


class Malformed(ValueError):
    """A book message or REST body that does not follow the protocol's shapes."""


def _integer(value: Any, what: str) -> int:
    if type(value) is not int:
        raise Malformed(f"{what} must be an integer, got {type(value).__name__}")
    return value


def _levels(value: Any, what: str) -> list[Level]:
    if not isinstance(value, list):
        raise Malformed(f"{what} must be a list of [price, qty]")
    out: list[Level] = []
    for level in value:
        if not isinstance(level, list) or len(level) != 2:
            raise Malformed(f"{what}: a level must be [price, qty]")
        price, qty = _integer(level[0], "price"), _integer(level[1], "qty")
        if price < 0 or qty < 0:
            raise Malformed(f"{what}: negative price or qty")
        out.append((price, qty))
    return out


class LocalBook:
    """A client's book of one market. ``depth`` None: the whole book; else the client keeps the
    best ``depth`` levels of each side (what a ``depth`` subscription maintains)."""

    def __init__(self, market: str, depth: int | None = None) -> None:
        self.market = market
        self.depth = depth
        self.bids = SideBook(bids=True)
        self.asks = SideBook(bids=False)
        self.book_seq: int | None = None  # None: not valid (no snapshot yet, or data lost since)
        self.ts = 0

    @property
    def valid(self) -> bool:
        return self.book_seq is not None

    def invalidate(self) -> None:
        """Forget the book: only a snapshot makes it valid again."""
        self.bids.clear()
        self.asks.clear()
        self.book_seq = None

    def best_bids(self, depth: int | None = None) -> list[Level]:
        return self.bids.best_first(depth)

    def best_asks(self, depth: int | None = None) -> list[Level]:
        return self.asks.best_first(depth)

    def checksum(self) -> int:
        return book_checksum(self.bids.best_first(CHECKSUM_LEVELS), self.asks.best_first(CHECKSUM_LEVELS))

    def apply(self, message: dict[str, Any]) -> Verdict:
        """Apply one ``book`` message (WebSocket). On any verdict but APPLIED the book is
        invalidated: the caller must resubscribe for a snapshot."""
        try:
            snapshot = message.get("snapshot") is True
            book_seq = _integer(message.get("book_seq"), "book_seq")
            prev = _integer(message.get("prev_book_seq"), "prev_book_seq")
            bids, asks = _levels(message.get("bids"), "bids"), _levels(message.get("asks"), "asks")
            expected = _integer(message.get("checksum"), "checksum")
            ts = message.get("ts")
        except Malformed:
            self.invalidate()
            return Verdict.MALFORMED
        if not snapshot:
            if self.book_seq is None:
                return Verdict.NO_SNAPSHOT
            if prev != self.book_seq:
                self.invalidate()
                return Verdict.GAP
        return self._load(snapshot, book_seq, bids, asks, expected, ts if type(ts) is int else self.ts)

    def load_snapshot(self, body: dict[str, Any]) -> Verdict:
        """Replace the book with a REST ``GET /v1/book/{market}`` body (a snapshot)."""
        try:
            book_seq = _integer(body.get("book_seq"), "book_seq")
            bids, asks = _levels(body.get("bids"), "bids"), _levels(body.get("asks"), "asks")
            expected = _integer(body.get("checksum"), "checksum")
        except Malformed:
            self.invalidate()
            return Verdict.MALFORMED
        ts = body.get("ts")
        return self._load(True, book_seq, bids, asks, expected, ts if type(ts) is int else self.ts)

    def _load(self, snapshot: bool, book_seq: int, bids: Sequence[Level], asks: Sequence[Level], expected: int,
              ts: int) -> Verdict:
        if snapshot:
            self.bids.clear()
            self.asks.clear()
        for price, qty in bids:
            self.bids.set(price, qty)
        for price, qty in asks:
            self.asks.set(price, qty)
        if self.depth is not None:
            _trim(self.bids, self.depth)
            _trim(self.asks, self.depth)
        if self.checksum() != expected:
            self.invalidate()
            return Verdict.CHECKSUM_MISMATCH
        self.book_seq, self.ts = book_seq, ts
        return Verdict.APPLIED


def _trim(side: SideBook, depth: int) -> None:
    """Drop the levels beyond the best ``depth`` (the lowest bids, the highest asks)."""
    while len(side) > depth:
        worst = side.prices[0] if side.bids else side.prices[-1]
        side.set(worst, 0)


def heartbeat_shows_loss(book: LocalBook, heartbeat: dict[str, Any]) -> bool:
    """True when the heartbeat says the gateway is past the valid book's ``book_seq``: a book
    message was lost (the heartbeat is queued after every message queued before it)."""
    if book.book_seq is None:
        return False
    seqs = heartbeat.get("book_seq")
    if not isinstance(seqs, dict):
        return False
    gateway_seq = seqs.get(book.market)
    return type(gateway_seq) is int and gateway_seq > book.book_seq


class TradeOutcome(Enum):
    NEW = "new"  # the next id (or the first one seen): deliver it
    DUPLICATE = "duplicate"  # already delivered (a replay after a reconnect, REST and WS overlap)
    AFTER_GAP = "after_gap"  # newer than the next expected id: the ids in between are missing


@dataclass
class TradeSequence:
    """Trade ids of one market as delivered: each once, increasing. ``last`` None before the
    first trade."""

    last: int | None = None

    def check(self, trade_id: int) -> TradeOutcome:
        if self.last is None or trade_id == self.last + 1:
            return TradeOutcome.NEW
        if trade_id <= self.last:
            return TradeOutcome.DUPLICATE
        return TradeOutcome.AFTER_GAP

    def deliver(self, trade_id: int) -> bool:
        """Record ``trade_id`` as delivered; False (and nothing recorded) when it was already."""
        if self.last is not None and trade_id <= self.last:
            return False
        self.last = trade_id
        return True


def backoff_delay(attempt: int, base_s: float, cap_s: float, uniform: Callable[[], float]) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 for the first after a loss):
    full jitter, ``uniform() * min(cap_s, base_s * 2**attempt)``; ``uniform`` returns [0, 1)."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = cap_s if attempt >= 62 else min(cap_s, base_s * (1 << attempt))
    return max(0.0, min(1.0, uniform())) * ceiling
