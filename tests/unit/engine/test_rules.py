"""Targeted tests of single rules and edge cases, with the exact events the engine must emit."""

from __future__ import annotations

import itertools

import pytest

from streams.domain.commands import (
    Amend,
    Cancel,
    CancelAll,
    MarketState,
    OrderType,
    Place,
    SetState,
    Side,
    STPMode,
    TimeInForce,
)
from streams.domain.events import (
    CancelAllDone,
    CancelReason,
    Event,
    ExpireReason,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    RejectCode,
    Trade,
)
from streams.domain.market import MarketSpec
from streams.engine import Engine, InvariantBreach

BUY, SELL = Side.BUY, Side.SELL
SPEC = MarketSpec("T", tick=1, lot=1, min_qty=1)
BAND = MarketSpec("B", tick=1, lot=1, min_qty=1, band_num=5, band_den=2)  # 2.5 %
_ids = itertools.count()


def place(
    oid: str,
    account: str,
    side: Side,
    price: int,
    qty: int,
    tif: TimeInForce = TimeInForce.GTC,
    *,
    market: bool = False,
    post_only: bool = False,
    stp: STPMode = STPMode.EXPIRE_MAKER,
    ts: int = 100,
) -> Place:
    order_type = OrderType.MARKET if market else OrderType.LIMIT
    return Place(f"c{next(_ids)}", ts, oid, account, side, order_type, price, qty, tif, post_only, stp)


def run(engine: Engine, *commands: object) -> list[Event]:
    out: list[Event] = []
    for cmd in commands:
        out.extend(engine.apply(cmd))  # type: ignore[arg-type]
        engine.check_invariants()
    return out


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def rejects(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.order_id, e.reason.wire) for e in events if isinstance(e, OrderRejected)]


def book(engine: Engine, side: Side) -> list[tuple[int, list[tuple[str, int]]]]:
    return engine.book_orders(side)


# ------------------------------------------------------------------ validation (rule 7)


def test_validation_order_first_failure_wins() -> None:
    e = Engine(MarketSpec("V", tick=5, lot=2, min_qty=4))
    run(e, place("dup", "a", BUY, 100, 4))
    cases = [
        (place("dup", "a", BUY, -1, 0), "duplicate_order_id"),
        (place("q", "a", BUY, -1, 0), "invalid_qty"),
        (place("p", "a", BUY, -1, 3), "invalid_price"),
        (place("t", "a", BUY, 101, 3), "invalid_tick"),
        (place("l", "a", BUY, 100, 3), "invalid_lot"),
        (place("m", "a", BUY, 100, 2), "below_min_qty"),
        (place("mkt", "a", BUY, -7, 3, market=True), "invalid_lot"),  # a market order's price is ignored
    ]
    for cmd, reason in cases:
        assert rejects(e.apply(cmd)) == [(cmd.order_id, reason)]
    e.apply(SetState("s", 100, MarketState.HALTED))
    assert rejects(e.apply(place("h", "a", BUY, -1, 0))) == [("h", "market_halted")]
    assert rejects(e.apply(place("dup", "a", BUY, -1, 0))) == [("dup", "duplicate_order_id")]


def test_rejected_place_does_not_use_up_its_id() -> None:
    e = Engine(SPEC)
    assert rejects(run(e, place("x", "a", BUY, 100, 0))) == [("x", "invalid_qty")]
    assert kinds(run(e, place("x", "a", BUY, 100, 1))) == ["OrderAccepted"]
    run(e, Cancel("c", 100, "x", "a"))
    assert rejects(run(e, place("x", "a", BUY, 100, 1))) == [("x", "duplicate_order_id")]


def test_fok_reject_has_no_side_effects() -> None:
    e = Engine(SPEC)
    run(e, place("s1", "a", SELL, 100, 1), place("s2", "b", SELL, 101, 1))
    before = e.snapshot()
    events = run(e, place("f", "a", BUY, 101, 2, TimeInForce.FOK, stp=STPMode.EXPIRE_MAKER))
    assert rejects(events) == [("f", "fok_unfilled")]  # s1 would be expired, not filled
    after = e.snapshot()
    assert before.replace(b'"seq":2', b'"seq":3') == after


def test_fok_counts_decrements_and_stops_at_expire_taker() -> None:
    e = Engine(SPEC)
    run(e, place("s1", "a", SELL, 100, 1), place("s2", "b", SELL, 100, 1))
    events = run(e, place("f", "a", BUY, 100, 2, TimeInForce.FOK, stp=STPMode.DECREMENT))
    assert kinds(events) == [
        "OrderAccepted",
        "OrderExpired",
        "OrderExpired",
        "Trade",
        "OrderFilled",
        "OrderFilled",
    ]
    e2 = Engine(SPEC)
    run(e2, place("s1", "a", SELL, 100, 1), place("s2", "b", SELL, 100, 1))
    for stp in (STPMode.EXPIRE_TAKER, STPMode.EXPIRE_BOTH):
        assert rejects(e2.apply(place(f"f{stp}", "a", BUY, 100, 1, TimeInForce.FOK, stp=stp))) == [
            (f"f{stp}", "fok_unfilled")
        ]
    assert kinds(run(e2, place("g", "a", BUY, 100, 1, TimeInForce.FOK, stp=STPMode.NONE)))[1] == "Trade"


# ------------------------------------------------------------------------ matching


def test_trade_at_maker_price_and_time_priority() -> None:
    e = Engine(SPEC)
    run(e, place("s1", "a", SELL, 101, 2), place("s2", "b", SELL, 100, 1), place("s3", "c", SELL, 100, 1))
    trades = [t for t in run(e, place("b1", "d", BUY, 105, 3)) if isinstance(t, Trade)]
    assert [(t.maker_order_id, t.price, t.qty) for t in trades] == [
        ("s2", 100, 1),
        ("s3", 100, 1),
        ("s1", 101, 1),
    ]
    assert [t.trade_id for t in trades] == [1, 2, 3]
    assert book(e, SELL) == [(101, [("s1", 1)])]
    assert e.last_trade_price == 101


def test_event_sequence_of_a_sweep() -> None:
    e = Engine(SPEC)
    run(e, place("s1", "a", SELL, 100, 1), place("s2", "a", SELL, 101, 1))
    events = e.apply(place("m", "b", BUY, 0, 3, market=True, ts=50))
    assert kinds(events) == [
        "OrderAccepted", "Trade", "OrderFilled", "Trade", "OrderFilled", "OrderExpired",
    ]  # fmt: skip
    assert [ev.seq for ev in events] == [3, 4, 5, 6, 7, 8]
    assert all(ev.ts == 100 for ev in events)  # clamped: never earlier than the last ts seen
    last = events[-1]
    assert isinstance(last, OrderExpired) and (last.qty, last.reason) == (1, ExpireReason.MARKET_REMAINDER)


def test_stp_modes_events() -> None:
    def setup() -> Engine:
        e = Engine(SPEC)
        run(e, place("own", "a", SELL, 100, 2), place("other", "b", SELL, 100, 5))
        return e

    e = setup()
    ev = run(e, place("t", "a", BUY, 100, 3, stp=STPMode.EXPIRE_MAKER))
    assert [(type(x).__name__, getattr(x, "order_id", None)) for x in ev[1:3]] == [
        ("OrderExpired", "own"),
        ("Trade", None),
    ]
    e = setup()
    ev = run(e, place("t", "a", BUY, 100, 3, stp=STPMode.EXPIRE_TAKER))
    assert kinds(ev) == ["OrderAccepted", "OrderExpired"] and book(e, SELL) == [
        (100, [("own", 2), ("other", 5)])
    ]
    e = setup()
    ev = run(e, place("t", "a", BUY, 100, 3, stp=STPMode.EXPIRE_BOTH))
    assert [(x.order_id, x.reason.wire) for x in ev if isinstance(x, OrderExpired)] == [
        ("own", "stp_maker"),
        ("t", "stp_taker"),
    ]
    assert book(e, SELL) == [(100, [("other", 5)])] and book(e, BUY) == []
    e = setup()
    ev = run(e, place("t", "a", BUY, 100, 3, stp=STPMode.DECREMENT))
    exp = [(x.order_id, x.qty, x.remaining) for x in ev if isinstance(x, OrderExpired)]
    assert exp == [("own", 2, 0), ("t", 2, 1)]
    assert [(t.maker_order_id, t.qty) for t in ev if isinstance(t, Trade)] == [("other", 1)]
    e = setup()
    ev = run(e, place("t", "a", BUY, 100, 1, stp=STPMode.DECREMENT))
    assert [(x.order_id, x.qty, x.remaining) for x in ev if isinstance(x, OrderExpired)] == [
        ("own", 1, 1),
        ("t", 1, 0),
    ]
    assert book(e, SELL) == [(100, [("own", 1), ("other", 5)])]
    e = setup()
    ev = run(e, place("t", "a", BUY, 100, 3, stp=STPMode.NONE))
    assert [(t.maker_order_id, t.qty) for t in ev if isinstance(t, Trade)] == [("own", 2), ("other", 1)]


def test_post_only() -> None:
    e = Engine(SPEC)
    run(e, place("s", "a", SELL, 100, 1))
    assert rejects(run(e, place("p", "b", BUY, 100, 1, post_only=True))) == [("p", "post_only_would_cross")]
    assert rejects(run(e, place("m", "b", BUY, 0, 1, market=True, post_only=True))) == [
        ("m", "post_only_would_cross")
    ]
    assert kinds(run(e, place("p2", "b", BUY, 99, 1, post_only=True))) == ["OrderAccepted"]


# ------------------------------------------------------------------------- amends


def test_amend_size_cut_keeps_priority_and_increase_requeues() -> None:
    e = Engine(SPEC)
    run(e, place("b1", "a", BUY, 100, 5), place("b2", "b", BUY, 100, 5))
    ev = run(e, Amend("x", 100, "b1", "a", qty=3))
    assert ev == [OrderAmended(seq=3, ts=100, order_id="b1", account="a", price=100, qty=3, requeued=False)]
    assert book(e, BUY) == [(100, [("b1", 3), ("b2", 5)])]
    ev = run(e, Amend("x", 100, "b1", "a", qty=3))  # equal quantity: still keeps priority
    assert isinstance(ev[0], OrderAmended) and not ev[0].requeued
    ev = run(e, Amend("x", 100, "b1", "a", qty=4))
    assert isinstance(ev[0], OrderAmended) and ev[0].requeued
    assert book(e, BUY) == [(100, [("b2", 5), ("b1", 4)])]


def test_amend_price_change_trades_at_once_as_gtc() -> None:
    e = Engine(SPEC)
    run(e, place("s", "a", SELL, 101, 1), place("b", "b", BUY, 100, 3, stp=STPMode.NONE))
    ev = run(e, Amend("x", 100, "b", "b", price=102))
    assert kinds(ev) == ["OrderAmended", "Trade", "OrderFilled"]
    trade = ev[1]
    assert isinstance(trade, Trade) and (trade.price, trade.taker_order_id, trade.taker_side) == (
        101,
        "b",
        BUY,
    )
    assert book(e, BUY) == [(102, [("b", 2)])]


def test_amend_rejections_leave_the_order_unchanged() -> None:
    e = Engine(BAND)
    run(e, place("s", "a", SELL, 100, 1), place("b", "b", BUY, 100, 1))  # last trade 100
    run(
        e,
        place("p", "c", BUY, 99, 2, post_only=True),
        place("q", "c", BUY, 98, 2),
        place("a1", "d", SELL, 101, 2),
    )
    snap = e.snapshot()
    cases = [
        (Amend("x", 100, "p", "c", price=101), "post_only_would_cross"),
        (Amend("x", 100, "q", "c", price=103), "price_band"),  # 103 > 100 * 1.025
        (Amend("x", 100, "q", "c", qty=0), "invalid_qty"),
        (Amend("x", 100, "q", "zz", qty=1), "unknown_order"),
        (Amend("x", 100, "nope", "c", qty=1), "unknown_order"),
    ]
    for cmd, reason in cases:
        assert rejects(run(e, cmd)) == [(cmd.order_id, reason)]
    e.apply(SetState("s", 100, MarketState.POST_ONLY))
    assert rejects(run(e, Amend("x", 100, "q", "c", price=97))) == [("q", "post_only_mode")]
    assert kinds(run(e, Amend("x", 100, "q", "c", qty=1))) == ["OrderAmended"]  # size cut allowed
    assert kinds(run(e, Amend("x", 100, "p", "c", price=97))) == ["OrderAmended"]  # post-only re-entry
    e.apply(SetState("s", 100, MarketState.HALTED))
    assert rejects(run(e, Amend("x", 100, "q", "c", qty=1))) == [("q", "market_halted")]
    assert kinds(run(e, Cancel("x", 100, "q", "c"))) == ["OrderCancelled"]
    assert snap != e.snapshot()


# ------------------------------------------------------------- band and states


def test_price_band_limits_and_market_orders() -> None:
    e = Engine(BAND)
    assert kinds(run(e, place("s", "a", SELL, 1000, 1), place("b", "b", BUY, 1000, 1)))[-1] == "OrderFilled"
    assert rejects(run(e, place("hi", "c", BUY, 1026, 1))) == [("hi", "price_band")]
    assert kinds(run(e, place("ok", "c", BUY, 1025, 1))) == ["OrderAccepted"]  # exactly at the edge
    assert rejects(run(e, place("lo", "c", SELL, 974, 1))) == [("lo", "price_band")]
    run(e, Cancel("x", 100, "ok", "c"))
    run(e, place("a1", "d", SELL, 1020, 1), place("a2", "d", SELL, 1025, 1), place("a3", "d", SELL, 1026, 1))
    ev = run(e, place("m", "e", BUY, 0, 5, market=True))
    assert [t.price for t in ev if isinstance(t, Trade)] == [1020, 1025]  # band fixed at arrival (1000)
    assert book(e, SELL) == [(1026, [("a3", 1)])]


def test_market_states() -> None:
    e = Engine(SPEC)
    run(e, place("b", "a", BUY, 100, 1))
    run(e, SetState("s", 100, MarketState.POST_ONLY))
    assert rejects(run(e, place("l", "a", BUY, 99, 1))) == [("l", "post_only_mode")]
    assert rejects(run(e, place("m", "a", BUY, 0, 1, market=True, post_only=True))) == [
        ("m", "post_only_mode")
    ]
    assert kinds(run(e, place("p", "a", BUY, 99, 1, post_only=True))) == ["OrderAccepted"]
    assert kinds(run(e, CancelAll("x", 100, "a"))) == ["OrderCancelled", "OrderCancelled", "CancelAllDone"]
    assert kinds(run(e, SetState("s", 100, MarketState.POST_ONLY))) == ["MarketStateChanged"]
    assert e.market_state is MarketState.POST_ONLY


# -------------------------------------------------------------- cancels and time


def test_cancel_all_in_entry_order_and_other_accounts_untouched() -> None:
    e = Engine(SPEC)
    run(
        e,
        place("x1", "a", BUY, 99, 1),
        place("y", "b", BUY, 99, 1),
        place("x2", "a", SELL, 105, 1),
        place("x3", "a", BUY, 100, 1),
    )
    run(e, Amend("am", 100, "x1", "a", price=98))  # re-entered last
    ev = run(e, CancelAll("c", 100, "a"))
    assert [(x.order_id, x.reason) for x in ev if isinstance(x, OrderCancelled)] == [
        ("x2", CancelReason.CANCEL_ALL),
        ("x3", CancelReason.CANCEL_ALL),
        ("x1", CancelReason.CANCEL_ALL),
    ]
    assert ev[-1] == CancelAllDone(seq=ev[-1].seq, ts=100, account="a", count=3)
    assert book(e, BUY) == [(99, [("y", 1)])] and book(e, SELL) == []
    assert kinds(run(e, CancelAll("c", 100, "a"))) == ["CancelAllDone"]


def test_cancel_of_another_accounts_order_is_unknown() -> None:
    e = Engine(SPEC)
    run(e, place("o", "a", BUY, 99, 1))
    assert rejects(run(e, Cancel("c", 100, "o", "b"))) == [("o", "unknown_order")]
    assert rejects(run(e, Cancel("c", 100, "zz", "a"))) == [("zz", "unknown_order")]
    ev = run(e, Cancel("c", 100, "o", "a"))
    assert ev == [OrderCancelled(seq=4, ts=100, order_id="o", account="a", qty=1, reason=CancelReason.USER)]
    assert rejects(run(e, Cancel("c", 100, "o", "a"))) == [("o", "unknown_order")]


def test_time_is_clamped_and_never_decreases() -> None:
    e = Engine(SPEC)
    assert e.apply(place("a", "a", BUY, 99, 1, ts=500))[0].ts == 500
    assert e.apply(place("b", "a", BUY, 99, 1, ts=400))[0].ts == 500
    assert e.last_ts == 500
    assert e.apply(place("c", "a", BUY, 99, 1, ts=600))[0].ts == 600


def test_take_book_changes() -> None:
    e = Engine(SPEC)
    run(e, place("b1", "a", BUY, 99, 2), place("b2", "a", BUY, 98, 1), place("s1", "b", SELL, 101, 3))
    assert e.take_book_changes() == [(BUY, 99, 2), (BUY, 98, 1), (SELL, 101, 3)]
    assert e.take_book_changes() == []
    run(e, place("t", "c", SELL, 99, 2), Amend("x", 100, "s1", "b", qty=1), place("s2", "b", SELL, 103, 1))
    assert e.take_book_changes() == [(BUY, 99, 0), (SELL, 101, 1), (SELL, 103, 1)]
    run(e, Cancel("x", 100, "s2", "b"))
    assert e.take_book_changes() == [(SELL, 103, 0)]
    assert e.book_levels(SELL) == [(101, 1)] and e.book_levels(BUY, depth=1) == [(98, 1)]


# ---------------------------------------------------------------------- invariants


@pytest.mark.parametrize("corruption", ["zero_open", "unindexed", "crossed", "total", "dead", "twice"])
def test_check_invariants_detects_corruption(corruption: str) -> None:
    e = Engine(SPEC)
    run(e, place("b1", "a", BUY, 99, 2), place("b2", "a", BUY, 99, 1), place("s1", "b", SELL, 101, 3))
    e.check_invariants()
    level = e._bids.levels[99]
    if corruption == "zero_open":
        level.queue[1].open = 0
    elif corruption == "unindexed":
        del e._orders["b2"]
    elif corruption == "crossed":
        order = e._orders["b2"]
        e._bids.remove(order)
        order.price, order.open = 102, 1
        e._bids.rest(order)
    elif corruption == "total":
        level.total += 1
    elif corruption == "dead":
        level.dead += 1
    else:
        level.queue.append(level.queue[0])  # the same order queued twice
        level.total += level.queue[0].open
    with pytest.raises(InvariantBreach):
        e.check_invariants()


def test_hot_path_refuses_to_rest_a_crossing_remainder(monkeypatch: pytest.MonkeyPatch) -> None:
    e = Engine(SPEC)
    run(e, place("s", "a", SELL, 100, 1))

    def broken_match(self: Engine, events: list[Event], ts: int, oid: str, *rest: object) -> int:
        return rest[-3]  # type: ignore[return-value]  # a matcher bug: returns without matching

    monkeypatch.setattr(Engine, "_match", broken_match)
    with pytest.raises(InvariantBreach, match="would cross"):
        e.apply(place("b", "b", BUY, 100, 1))


def test_reject_codes_are_stable() -> None:
    assert {c.wire: int(c) for c in RejectCode} == {
        "duplicate_order_id": 1, "market_halted": 2, "post_only_mode": 3, "invalid_qty": 4,
        "invalid_price": 5, "invalid_tick": 6, "invalid_lot": 7, "below_min_qty": 8, "price_band": 9,
        "post_only_would_cross": 10, "fok_unfilled": 11, "unknown_order": 12, "above_max_qty": 13,
        "above_max_notional": 14,
    }  # fmt: skip
    assert {c.wire: int(c) for c in ExpireReason} == {
        "ioc_remainder": 1, "market_remainder": 2, "stp_maker": 3, "stp_taker": 4, "stp_decrement": 5,
    }  # fmt: skip
