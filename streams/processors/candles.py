"""OHLCV candles from trades: the pure folding step of the market-data processor (no I/O).

State is one JSON-able dict per market (the faust table value, see ``streams.processors.marketdata``):

``{"last": <last trade_id folded>, "ts": <its time>, "open": {interval: candle}}`` (states written
before this layout may also hold a ``closed`` key, which is ignored)

- Event time is the trade time (``ts``, ms since the epoch, UTC); a trade belongs to the window
  ``[ts - ts % length, +length)`` of each interval.
- A candle is *final* when the first trade of a later window of the same market and interval
  arrives: the closed candle is emitted again with ``final = True``, then the new window's candle.
- Trades with ``trade_id <= last`` were already folded (an at-least-once replay after a restart)
  and change nothing. No closed candle is kept: the processor publishes a candle before the
  state that includes it reaches the changelog, so a restart never needs to publish one again.

Candles are plain dicts in the shape of ``xchg.v1.Candle`` except ``quote_volume``, an ``int``
here (JSON keeps big integers exact); ``to_record`` makes the Avro ``Decimal``.

``overflow`` says, before a trade is folded, whether a candle it would change would leave its
type (``volume`` a long, ``quote_volume`` a decimal(38, 0)); the market registry's bounds make
that impossible for the engine's trades (docs/matching-rules.md), and the processor dead-letters
such a trade (``skip``) rather than crash on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from streams.domain.market import DECIMAL38_MAX, LONG_MAX

INTERVALS: dict[str, int] = {"1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}

Candle = dict[str, Any]
State = dict[str, Any]


def new_state() -> State:
    return {"last": 0, "open": {}}


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
            out.append(dict(current, final=True))
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


def overflow(state: State, trade: Mapping[str, Any]) -> str | None:
    """The candle field that folding ``trade`` would take beyond its type, or None (pure)."""
    ts, price, qty = trade["ts"], trade["price"], trade["qty"]
    for interval, length in INTERVALS.items():
        current = state["open"].get(interval)
        same = current is not None and ts - ts % length <= current["window_start"]
        volume = (current["volume"] if same else 0) + qty
        quote = (current["quote_volume"] if same else 0) + price * qty
        if not 0 <= volume <= LONG_MAX:
            return f"{interval} volume {volume} beyond a long"
        if not 0 <= quote <= DECIMAL38_MAX:
            return f"{interval} quote_volume {quote} beyond decimal(38,0)"
    return None


def skip(state: State, trade: Mapping[str, Any]) -> None:
    """Mark ``trade`` as folded without counting it (it went to the dead letters instead)."""
    state["last"] = max(state["last"], trade["trade_id"])


def to_record(candle: Mapping[str, Any]) -> dict[str, Any]:
    """An ``xchg.v1.Candle`` value for the codec (``quote_volume`` as a Decimal)."""
    return {**candle, "quote_volume": Decimal(int(candle["quote_volume"]))}
