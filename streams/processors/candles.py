"""OHLCV candles from trades: the pure folding step of the market-data processor (no I/O).

State is one JSON-able dict per market (the faust table value, see ``streams.processors.marketdata``):

``{"last": <last trade_id folded>, "ts": <its time>, "open": {interval: candle}, "closed": {interval: [...]}}``

- Event time is the trade time (``ts``, ms since the epoch, UTC); a trade belongs to the window
  ``[ts - ts % length, +length)`` of each interval.
- A candle is *final* when the first trade of a later window of the same market and interval
  arrives: the closed candle is emitted again with ``final = True``, then the new window's candle.
- Trades with ``trade_id <= last`` were already folded (an at-least-once replay after a restart)
  and change nothing. ``closed`` can keep the last ``KEEP_CLOSED`` closed candles per interval for
  ``replay_candles`` (0: the processor orders its writes so that it never needs them).

Candles are plain dicts in the shape of ``xchg.v1.Candle`` except ``quote_volume``, an ``int``
here (JSON keeps big integers exact); ``to_record`` makes the Avro ``Decimal``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

INTERVALS: dict[str, int] = {"1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}
KEEP_CLOSED = 0  # the processor acknowledges candles before state (no replay history needed)

Candle = dict[str, Any]
State = dict[str, Any]


def new_state() -> State:
    return {"last": 0, "open": {}, "closed": {}}


def _start(trade: Mapping[str, Any], interval: str, length: int) -> Candle:
    ts, price, qty = trade["ts"], trade["price"], trade["qty"]
    return {
        "market": trade["market"], "interval": interval, "window_start": ts - ts % length,
        "open": price, "high": price, "low": price, "close": price, "volume": qty,
        "quote_volume": price * qty, "trade_count": 1,
        "first_trade_id": trade["trade_id"], "last_trade_id": trade["trade_id"], "final": False,
    }


def fold(state: State, trade: Mapping[str, Any]) -> list[Candle]:
    """Fold one trade into ``state`` (mutated); returns the candle updates to publish, in order.

    Returns ``[]`` for a trade already folded (``trade_id <= state["last"]``)."""
    trade_id = trade["trade_id"]
    if trade_id <= state["last"]:
        return []
    state["last"] = trade_id
    state["ts"] = trade["ts"]
    out: list[Candle] = []
    ts, price, qty = trade["ts"], trade["price"], trade["qty"]
    for interval, length in INTERVALS.items():
        current = state["open"].get(interval)
        window = ts - ts % length
        if current is not None and window > current["window_start"]:
            closed = dict(current, final=True)
            out.append(closed)
            if KEEP_CLOSED:
                history = state["closed"].setdefault(interval, [])
                history.append(closed)
                del history[:-KEEP_CLOSED]
            current = None
        if current is None:
            current = _start(trade, interval, length)
        else:
            # A late trade (ts before the open window: cannot happen with the engine's monotonic
            # times) is counted in the open window rather than reopening a closed one.
            current["high"] = max(current["high"], price)
            current["low"] = min(current["low"], price)
            current["close"] = price
            current["volume"] += qty
            current["quote_volume"] += price * qty
            current["trade_count"] += 1
            current["last_trade_id"] = trade_id
        state["open"][interval] = current
        out.append(dict(current))
    return out


def replay_candles(state: State, from_trade_id: int) -> list[Candle]:
    """The candle updates that trades ``>= from_trade_id`` produced, as far as the state still knows:
    the closed candles they closed (kept ones) and every open candle."""
    out: list[Candle] = []
    for interval in INTERVALS:
        out.extend(dict(c) for c in state["closed"].get(interval, []) if c["last_trade_id"] >= from_trade_id - 1)
        current = state["open"].get(interval)
        if current is not None:
            out.append(dict(current))
    return out


def to_record(candle: Mapping[str, Any]) -> dict[str, Any]:
    """An ``xchg.v1.Candle`` value for the codec (``quote_volume`` as a Decimal)."""
    return {**candle, "quote_volume": Decimal(int(candle["quote_volume"]))}


def reference_candles(trades: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, int], Candle]:
    """Candles computed directly from a trade list (the test oracle): key (market, interval, start).

    Every window but the last of a (market, interval) is final."""
    states: dict[str, State] = {}
    result: dict[tuple[str, str, int], Candle] = {}
    for trade in sorted(trades, key=lambda t: (t["market"], t["trade_id"])):
        state = states.setdefault(trade["market"], new_state())
        for candle in fold(state, trade):
            result[(candle["market"], candle["interval"], candle["window_start"])] = candle
    return result
