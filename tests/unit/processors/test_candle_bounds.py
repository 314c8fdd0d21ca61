"""The candle fold's overflow check (streams/processors/candles.py): a trade that would take a
candle past its type is found before it is folded, and skipping it keeps the id sequence."""

from __future__ import annotations

from typing import Any

from streams.domain.market import LONG_MAX
from streams.processors.candles import fold, new_state, overflow, skip

T0 = 1_767_268_800_000  # a day boundary


def trade(trade_id: int, ts: int, price: int, qty: int) -> dict[str, Any]:
    return {"market": "M", "trade_id": trade_id, "ts": ts, "price": price, "qty": qty}


def test_volume_past_a_long_within_one_window_is_found() -> None:
    state = new_state()
    first = trade(1, T0, 100, 2**62 + 1)
    assert overflow(state, first) is None
    fold(state, first)
    second = trade(2, T0 + 10, 100, 2**62 + 1)
    assert overflow(state, second) == f"1m volume {2 * (2**62 + 1)} beyond a long"
    skip(state, second)
    assert state["last"] == 2 and state["open"]["1m"]["volume"] == 2**62 + 1
    assert fold(state, trade(3, T0 + 20, 100, 1))  # the next trade folds as usual


def test_a_new_window_starts_from_zero() -> None:
    state = new_state()
    fold(state, trade(1, T0, 100, LONG_MAX - 1))
    # A later minute, hour and day: every interval's window is new, so nothing adds up.
    assert overflow(state, trade(2, T0 + 86_400_000, 100, LONG_MAX - 1)) is None


def test_quote_volume_cannot_pass_decimal_38_while_volume_fits_a_long() -> None:
    # Every price is a long, so quote volume <= LONG_MAX * volume < 10^38 whenever volume fits:
    # the largest trade that passes the volume check still fits decimal(38, 0).
    state = new_state()
    biggest = trade(1, T0, LONG_MAX, LONG_MAX)
    assert overflow(state, biggest) is None
    assert fold(state, biggest)[0]["quote_volume"] == LONG_MAX * LONG_MAX < 10**38
