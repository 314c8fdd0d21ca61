"""Tickers from trades and md.book: the pure folding step of the ticker processor (no clock, no I/O).

State is one JSON-able dict per market (the faust table value, see ``streams.processors.ticker_worker``)::

    {"market": str,
     "last": <last trade_id folded, 0: none>, "anchor": <time of the last trade, clamped, or None>,
     "price": <last trade price or None>, "qty": <its quantity or None>,
     "buckets": [[minute_start, open, high, low, close, volume, quote_volume, trades], ...],
     "book_seq": <book_seq of the last complete md.book delta, 0: none>,
     "pending": [book_seq, next part] of a split delta being applied, or None,
     "bids": {"<price>": qty}, "asks": {"<price>": qty}, "top": [bid, ask] of those levels,
     "best": [bid, bid_qty, ask, ask_qty] as of book_seq,
     "ts": <newest event time folded, 0: none>, "breaks": <md.book chain breaks seen>}

Invariants (every fold keeps them; the hypothesis tests check the figures they imply):

- **Trades** are folded at most once: a trade with ``trade_id <= last`` changes nothing (an
  at-least-once re-read after a restart), like the candle fold. Trade times are non-decreasing
  per market (the engine clamps them); a trade older than ``anchor`` is treated as happening at
  ``anchor`` (the same clamp), so ``anchor`` never decreases.
- **The 24 h window** is event time: the 1440 whole minutes ending with the minute of ``anchor``
  (``[minute(anchor) - 1439 min, minute(anchor) + 1 min)``), so it always holds the last trade.
  ``buckets`` holds one aggregate per minute that has trades, ascending, and only minutes inside
  the window: at most 1440 buckets, whatever the trade rate, so the state stays bounded. Every
  24 h figure of ``ticker`` is an aggregate of the buckets, hence equals the same aggregate over
  the trades of the window (``reference_ticker`` recomputes them from the full trade list).
- **The book** (``bids``/``asks``, price -> total quantity, only levels with quantity > 0) is the
  market's aggregated L2 book after the md.book records folded: a snapshot record (part 0)
  replaces it, other records set each changed level to its new absolute quantity (0 removes it).
  A delta split into parts is complete once its last part is folded; only then do ``book_seq``
  and ``best`` advance, so ``best`` is always the best bid/ask of a consistent book, at
  ``book_seq``. Records already applied (``book_seq`` below ``book_seq``, or a part before the
  next one expected of the delta in progress) change nothing. A delta whose ``prev_book_seq`` is
  not ``book_seq`` (lost input) is applied all the same (quantities are absolute, so every level
  it touches is right) and counted in ``breaks``; the book is exact again at the next snapshot.
- ``top`` is the best price of each side of the current levels (also mid-delta); ``best`` is
  ``top`` with its quantities, copied when a delta completes.
- ``ts`` is the newest event time (trade or md.book ``ts``) among the inputs that changed the
  ticker. Trades and md.book are folded in an order that depends on the consumer, but each stream
  is folded in its own order, and every figure depends only on its own stream (``ts`` is a max):
  the final ticker does not depend on how the two streams were interleaved.

Prices, quantities and volumes are ints (JSON keeps big integers exact); the quote volume is an
``int`` here and an Avro ``Decimal`` in ``to_record``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

MINUTE = 60_000
WINDOW_MINUTES = 1440  # 24 h
WINDOW_MS = WINDOW_MINUTES * MINUTE

State = dict[str, Any]
Ticker = dict[str, Any]

# Positions in a bucket: [minute_start, open, high, low, close, volume, quote_volume, trades].
_START, _OPEN, _HIGH, _LOW, _CLOSE, _VOLUME, _QUOTE, _COUNT = range(8)


def new_state(market: str) -> State:
    return {"market": market, "last": 0, "anchor": None, "price": None, "qty": None, "buckets": [],
            "book_seq": 0, "pending": None, "bids": {}, "asks": {}, "top": [None, None],
            "best": [None, None, None, None], "ts": 0, "breaks": 0}


def window_start(anchor: int) -> int:
    """First millisecond of the 24 h window that ends with the minute of ``anchor``."""
    return anchor - anchor % MINUTE - (WINDOW_MINUTES - 1) * MINUTE


def fold_trade(state: State, trade: Mapping[str, Any]) -> bool:
    """Fold one trade (an ``xchg.v1.Trade`` value) into ``state`` (mutated); True when the
    ticker changed, False for a trade already folded (``trade_id <= last``)."""
    trade_id = trade["trade_id"]
    if trade_id <= state["last"]:
        return False
    price, qty = trade["price"], trade["qty"]
    anchor = state["anchor"]
    at = trade["ts"] if anchor is None else max(anchor, trade["ts"])
    minute = at - at % MINUTE
    buckets: list[list[int]] = state["buckets"]
    if buckets and buckets[-1][_START] == minute:
        bucket = buckets[-1]
        bucket[_HIGH] = max(bucket[_HIGH], price)
        bucket[_LOW] = min(bucket[_LOW], price)
        bucket[_CLOSE] = price
        bucket[_VOLUME] += qty
        bucket[_QUOTE] += price * qty
        bucket[_COUNT] += 1
    else:
        buckets.append([minute, price, price, price, price, qty, price * qty, 1])
        first = window_start(at)
        stale = 0
        while buckets[stale][_START] < first:
            stale += 1
        del buckets[:stale]
    state["last"] = trade_id
    state["anchor"] = at
    state["price"], state["qty"] = price, qty
    state["ts"] = max(state["ts"], trade["ts"])
    return True


def _best(levels: Mapping[str, int], highest: bool) -> int | None:
    if not levels:
        return None
    prices = [int(p) for p in levels]
    return max(prices) if highest else min(prices)


def _apply_changes(state: State, changes: Iterable[Mapping[str, Any]]) -> None:
    """Set each changed level and keep ``top`` (the best price of each side) current: a level
    better than the top becomes it; when the top level is gone at the end, the side is searched
    again (the only step that is not O(changes))."""
    bids: dict[str, int] = state["bids"]
    asks: dict[str, int] = state["asks"]
    bid, ask = state["top"]
    for change in changes:
        price, qty = change["price"], change["qty"]
        if change["side"] == "buy":
            if qty > 0:
                bids[str(price)] = qty
                if bid is None or price > bid:
                    bid = price
            else:
                bids.pop(str(price), None)
        elif qty > 0:
            asks[str(price)] = qty
            if ask is None or price < ask:
                ask = price
        else:
            asks.pop(str(price), None)
    # A top still present is the best: every level better than it was added after it, and would
    # have become the top. A top that was removed (and not set again) is searched for.
    if bid is not None and str(bid) not in bids:
        bid = _best(bids, highest=True)
    if ask is not None and str(ask) not in asks:
        ask = _best(asks, highest=False)
    state["top"] = [bid, ask]


def _complete(state: State, book_seq: int) -> None:
    bid, ask = state["top"]
    state["book_seq"] = book_seq
    state["pending"] = None
    state["best"] = [bid, None if bid is None else state["bids"][str(bid)],
                     ask, None if ask is None else state["asks"][str(ask)]]


def fold_book(state: State, delta: Mapping[str, Any]) -> bool:
    """Fold one md.book record (an ``xchg.v1.BookDelta`` value) into ``state`` (mutated); True
    when the ticker changed (the record completed a delta: ``book_seq`` and maybe the best
    bid/ask moved), False for a record already applied or a part that leaves its delta
    incomplete."""
    book_seq = delta["book_seq"]
    part, parts = delta.get("part", 0), delta.get("parts", 1)
    pending = state["pending"]
    broken = False
    if pending is not None:
        pending_seq, next_part = pending
        if book_seq < pending_seq or (book_seq == pending_seq and part < next_part):
            return False  # already applied
        if book_seq > pending_seq or part > next_part:
            # The delta in progress never completed (its last parts are missing): a break. Its
            # parts so far stay applied (absolute levels); continue with this record.
            broken = True
            state["pending"] = pending = None
    if pending is None:
        if book_seq <= state["book_seq"]:
            return False  # already applied
        if part > 0:
            broken = True  # a later part without its first: the replace or levels are lost
        elif delta.get("snapshot", False):
            state["bids"], state["asks"], state["top"] = {}, {}, [None, None]
        elif delta.get("prev_book_seq", 0) != state["book_seq"]:
            broken = True  # a delta between the last applied one and this one is missing
    state["breaks"] += broken
    _apply_changes(state, delta["changes"])
    state["ts"] = max(state["ts"], delta["ts"])
    if part + 1 < parts:
        state["pending"] = [book_seq, part + 1]
        return False
    _complete(state, book_seq)
    return True


def fold(state: State, logical_topic: str, record: Mapping[str, Any]) -> bool:
    """``fold_trade`` for a ``trades`` record, ``fold_book`` for an ``md.book`` one."""
    if logical_topic == "trades":
        return fold_trade(state, record)
    if logical_topic == "md.book":
        return fold_book(state, record)
    raise ValueError(f"the ticker folds trades and md.book, not {logical_topic}")


def ticker(state: State) -> Ticker:
    """The ticker of ``state``, in the shape of ``xchg.v1.Ticker`` (``quote_volume_24h`` an int)."""
    buckets: list[list[int]] = state["buckets"]
    bid, bid_qty, ask, ask_qty = state["best"]
    price = state["price"]
    opening = buckets[0][_OPEN] if buckets else None
    return {
        "market": state["market"],
        "best_bid": bid, "bid_qty": bid_qty, "best_ask": ask, "ask_qty": ask_qty,
        "book_seq": state["book_seq"],
        "last_price": price, "last_qty": state["qty"], "last_trade_id": state["last"],
        "window_start": None if state["anchor"] is None else window_start(state["anchor"]),
        "open_24h": opening,
        "high_24h": max(b[_HIGH] for b in buckets) if buckets else None,
        "low_24h": min(b[_LOW] for b in buckets) if buckets else None,
        "change_24h": None if price is None or opening is None else price - opening,
        "volume_24h": sum(b[_VOLUME] for b in buckets),
        "quote_volume_24h": sum(b[_QUOTE] for b in buckets),
        "trade_count_24h": sum(b[_COUNT] for b in buckets),
        "ts": state["ts"],
    }


def to_record(tick: Mapping[str, Any]) -> dict[str, Any]:
    """An ``xchg.v1.Ticker`` value for the codec (``quote_volume_24h`` as a Decimal)."""
    return {**tick, "quote_volume_24h": Decimal(int(tick["quote_volume_24h"]))}


def fold_all(trades: Iterable[Mapping[str, Any]], deltas: Iterable[Mapping[str, Any]]) -> dict[str, Ticker]:
    """The final ticker of every market from its trades (in trade_id order) and md.book records
    (in log order): what the processor's last record per market must equal."""
    states: dict[str, State] = {}
    for trade in sorted(trades, key=lambda t: (t["market"], t["trade_id"])):
        fold_trade(states.setdefault(trade["market"], new_state(trade["market"])), trade)
    for delta in deltas:
        fold_book(states.setdefault(delta["market"], new_state(delta["market"])), delta)
    return {market: ticker(state) for market, state in states.items()}
