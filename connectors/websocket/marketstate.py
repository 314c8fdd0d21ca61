"""Everything one gateway worker knows about the markets, fed by decoded topic records.

Pure (no I/O, no clock): the Kafka reader hands records in topic order; each ``on_*`` method
updates the state and returns what must be fanned out. Invariants:

- ``books[m]`` is the ``md.book`` state of market m (see ``book.MarketBook``);
- ``recent_trades[m]`` holds the last ``recent_trades`` trade messages of m, trade_id strictly
  increasing (a trade read twice is dropped);
- ``candles[(m, interval)]`` maps window_start → the latest candle message of that window, at
  most ``candle_history`` windows (the oldest dropped first);
- ``status[m]`` is m's state from its latest ``MarketStateChanged`` (active when none);
- a channel of a market is *ready* when its source topic reached the end offsets it had when the
  worker started and, for ``book`` (and ``ticker``, which reads the book), the book is synced.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from connectors.websocket import protocol
from connectors.websocket.book import BUY, Applied, MarketBook, Outcome, window_changes
from connectors.websocket.protocol import Message
from connectors.websocket.ticker import TradeWindow, current_ticker

# Which source topic (logical name) a channel needs to have caught up with.
CHANNEL_SOURCE = {"book": "md.book", "ticker": "md.book", "trades": "trades", "candles": "md.candles",
                  "status": "orders.events", "orders": "orders.events", "fills": "orders.events"}


@dataclass
class BookPublication:
    """One applied book change of a market, as frames per subscribed depth (None: whole book)."""

    market: str
    snapshot: bool
    frames: dict[int | None, bytes]


@dataclass
class StatusEntry:
    state: str = "active"
    seq: int | None = None
    ts: int | None = None


@dataclass
class MarketState:
    markets: list[str]
    recent_trades_kept: int = 1000
    candle_history: int = 1440
    books: dict[str, MarketBook] = field(init=False)
    trade_windows: dict[str, TradeWindow] = field(init=False)
    recent_trades: dict[str, deque[Message]] = field(init=False)
    candles: dict[tuple[str, str], dict[int, Message]] = field(init=False)
    status: dict[str, StatusEntry] = field(init=False)
    caught_up: set[str] = field(default_factory=set)  # logical topics at their start-up end
    ticker_dirty: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.books = {m: MarketBook(m) for m in self.markets}
        self.trade_windows = {m: TradeWindow() for m in self.markets}
        self.recent_trades = {m: deque(maxlen=self.recent_trades_kept) for m in self.markets}
        self.candles = {}
        self.status = {m: StatusEntry() for m in self.markets}

    # -- readiness -------------------------------------------------------------------------------

    def ready(self, channel: str, market: str | None) -> str | None:
        """None when the channel of the market can be served, else why not (for ``not_ready``)."""
        source = CHANNEL_SOURCE[channel]
        if source not in self.caught_up:
            return f"the gateway is still reading {source} up to its end"
        if source == "md.book" and market is not None and not self.books[market].synced:
            return f"the book of {market} is waiting for a snapshot"
        return None

    def unsynced_markets(self) -> list[str]:
        return [m for m, b in self.books.items() if not b.synced]

    # -- book ------------------------------------------------------------------------------------

    def on_book(self, record: dict[str, Any], depths: set[int | None]) -> BookPublication | None:
        """Apply one md.book record; a publication when the book moved (``depths``: those that
        have subscribers for the market)."""
        market = record["market"]
        book = self.books.get(market)
        if book is None:
            return None
        wanted = frozenset(d for d in depths if d is not None)
        outcome, applied = book.apply(record, wanted)
        if outcome is not Outcome.APPLIED or applied is None:
            return None
        self.ticker_dirty.add(market)
        return BookPublication(market, applied.snapshot, book_frames(book, applied, depths))

    def book_snapshot(self, market: str, depth: int | None) -> Message:
        book = self.books[market]
        window = book.window(depth)
        return protocol.book(market, True, book.book_seq, book.prev_book_seq, depth, window.bids, window.asks,
                             book.checksum(), book.ts)

    # -- trades, candles, events -----------------------------------------------------------------

    def on_trade(self, record: dict[str, Any]) -> Message | None:
        market = record["market"]
        kept = self.recent_trades.get(market)
        if kept is None:
            return None
        trade_id = record["trade_id"]
        if kept and kept[-1]["trade_id"] >= trade_id:
            return None  # read twice
        message = protocol.trade(record)
        kept.append(message)
        self.trade_windows[market].add(trade_id, record["price"], record["qty"], record["ts"])
        self.ticker_dirty.add(market)
        return message

    def trades_since(self, market: str, since_trade_id: int, limit: int) -> list[Message]:
        return [t for t in self.recent_trades[market] if t["trade_id"] > since_trade_id][:limit]

    def on_candle(self, record: dict[str, Any]) -> Message | None:
        market = record["market"]
        if market not in self.books or record["interval"] not in protocol.INTERVALS:
            return None
        message = protocol.candle(record)
        windows = self.candles.setdefault((market, record["interval"]), {})
        windows[record["window_start"]] = message
        while len(windows) > self.candle_history:
            del windows[min(windows)]
        return message

    def latest_candle(self, market: str, interval: str) -> Message | None:
        windows = self.candles.get((market, interval))
        return windows[max(windows)] if windows else None

    def candles_between(self, market: str, interval: str, start: int, end: int) -> list[Message]:
        windows = self.candles.get((market, interval), {})
        return [windows[w] for w in sorted(windows) if start <= w < end]

    def on_event(self, record: dict[str, Any]) -> tuple[Message | None, list[tuple[str, str, Message]]]:
        """(a status message if the market changed state, the private messages)."""
        market = record["market"]
        name, body = record["body"]
        status_message = None
        if name == "xchg.v1.MarketStateChanged" and market in self.status:
            self.set_status(market, body["state"], record["seq"], record["ts"])
            status_message = self.status_message(market)
        return status_message, protocol.private_messages(record)

    def set_status(self, market: str, state: str, seq: int | None, ts: int | None) -> None:
        entry = self.status[market]
        if entry.seq is not None and seq is not None and seq <= entry.seq:
            return
        entry.state, entry.seq, entry.ts = state, seq, ts

    def status_message(self, market: str) -> Message:
        entry = self.status[market]
        return protocol.status(market, entry.state, entry.seq, entry.ts)

    def ticker(self, market: str) -> Message:
        return current_ticker(market, self.books[market], self.trade_windows[market])


def _by_side(changes: list[tuple[str, int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    bids = sorted(((p, q) for s, p, q in changes if s == BUY), reverse=True)
    asks = sorted((p, q) for s, p, q in changes if s != BUY)
    return bids, asks


def book_frames(book: MarketBook, applied: Applied, depths: set[int | None]) -> dict[int | None, bytes]:
    """The encoded book message of an applied change for every depth in ``depths``: a snapshot
    of the window for a snapshot, else the window's changes (the whole delta for depth None)."""
    checksum = book.checksum()
    out: dict[int | None, bytes] = {}
    for depth in depths:
        if applied.snapshot:
            window = book.window(depth)
            bids, asks = window.bids, window.asks
        elif depth is None:
            bids, asks = _by_side(applied.changes)
        else:
            before, after = applied.before[depth], book.window(depth)
            bids = window_changes(before.bids, after.bids)
            asks = window_changes(before.asks, after.asks)
        out[depth] = protocol.encode(protocol.book(book.market, applied.snapshot, applied.book_seq,
                                                   applied.prev_book_seq, depth, bids, asks, checksum, applied.ts))
    return out
