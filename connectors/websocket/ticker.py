"""The ticker of a market (``docs/websocket-protocol.md``, ``ticker``): the latest ``md.ticker``
record of the market (computed once by ``xchg ticker run``) when the topic has one, else the
gateway's own computation from its book and trades.

The 24 h window is whole minutes of trade time: the trades whose minute lies within the 1,440
minutes ending with the latest trade's minute. :class:`TradeWindow` keeps one bucket per minute
(first price, volume), so its memory is bounded whatever the trade rate. Pure: trade times are
the records' own.

:func:`current_ticker` is the one place that says where a ticker comes from. The latest
``md.ticker`` record of a market is kept on its :class:`TradeWindow` (``published``, fed by
:meth:`TradeWindow.publish`), which the gateway already holds per market: a record never replaces
a newer one (``book_seq`` and ``last_trade_id`` never go back, as the topic guarantees), so
records read twice or out of a restart's overlap change nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connectors.websocket.book import MarketBook
from connectors.websocket.protocol import Message

MINUTE_MS = 60_000
WINDOW_MINUTES = 1440


@dataclass(slots=True)
class _Minute:
    minute: int
    open: int
    volume: int


class TradeWindow:
    """Trades of the last 24 h of trade time, per minute. Trades arrive in trade_id order."""

    def __init__(self) -> None:
        self.minutes: deque[_Minute] = deque()
        self.volume = 0
        self.last: int | None = None
        self.last_trade_id: int | None = None
        self.last_ts: int | None = None
        self.published: Message | None = None  # from the market's latest md.ticker record

    def publish(self, record: Mapping[str, Any]) -> bool:
        """Keep a decoded ``md.ticker`` record (``xchg.v1.Ticker``) as the market's ticker; True
        when it changed what :func:`current_ticker` serves."""
        message = ticker_message(record)
        current = self.published
        if current is not None and ((record["book_seq"], record["last_trade_id"])
                                    < (current["book_seq"], current["last_trade_id"] or 0)):
            return False  # older than the one kept
        if message == current:
            return False
        self.published = message
        return True

    def add(self, trade_id: int, price: int, qty: int, ts: int) -> None:
        if self.last_trade_id is not None and trade_id <= self.last_trade_id:
            return  # read twice
        minute = ts // MINUTE_MS
        if self.minutes and self.minutes[-1].minute >= minute:
            self.minutes[-1].volume += qty
        else:
            self.minutes.append(_Minute(minute, price, qty))
        self.volume += qty
        self.last, self.last_trade_id, self.last_ts = price, trade_id, ts
        newest = self.minutes[-1].minute
        while self.minutes[0].minute <= newest - WINDOW_MINUTES:
            self.volume -= self.minutes.popleft().volume

    @property
    def open(self) -> int | None:
        return self.minutes[0].open if self.minutes else None


def ticker_message(record: Mapping[str, Any]) -> Message:
    """The ``ticker`` message of an ``md.ticker`` record: the same fields as the gateway's own
    computation (``last_trade_id`` and ``ts`` null instead of 0 before any trade / input)."""
    return {"type": "ticker", "market": record["market"],
            "bid": record["best_bid"], "bid_qty": record["bid_qty"],
            "ask": record["best_ask"], "ask_qty": record["ask_qty"],
            "last": record["last_price"], "last_trade_id": record["last_trade_id"] or None,
            "volume_24h": record["volume_24h"], "open_24h": record["open_24h"],
            "change_24h": record["change_24h"], "book_seq": record["book_seq"], "ts": record["ts"] or None}


def current_ticker(market: str, book: MarketBook, trades: TradeWindow) -> Message:
    """The ticker message of ``market`` now: its latest ``md.ticker`` record if the gateway read
    one, else computed from the gateway's book and trade window."""
    if trades.published is not None:
        return trades.published
    bid = book.bids.best_first(1)
    ask = book.asks.best_first(1)
    opened = trades.open
    last = trades.last
    ts = max(trades.last_ts or 0, book.ts) or None
    return {"type": "ticker", "market": market,
            "bid": bid[0][0] if bid else None, "bid_qty": bid[0][1] if bid else None,
            "ask": ask[0][0] if ask else None, "ask_qty": ask[0][1] if ask else None,
            "last": last, "last_trade_id": trades.last_trade_id, "volume_24h": trades.volume,
            "open_24h": opened, "change_24h": None if last is None or opened is None else last - opened,
            "book_seq": book.book_seq, "ts": ts}
