"""The bounds beyond the conformance rules (streams/engine/matcher.py): maximum quantity and
notional per order, and a collar that self-trades cannot walk."""

from __future__ import annotations

from streams.domain.commands import Amend, OrderType, Place, Side, STPMode, TimeInForce
from streams.domain.events import OrderAccepted, OrderRejected, RejectCode, Trade
from streams.domain.market import MarketSpec
from streams.engine.matcher import Engine

BUY, SELL = Side.BUY, Side.SELL
SPEC = MarketSpec("B", tick=1, lot=1, min_qty=1, band_num=10, band_den=1, max_qty=1000, max_notional=50_000,
                  collar_num=20, collar_den=1, collar_interval_ms=60_000)


def place(oid: str, account: str, side: Side, price: int, qty: int, ts: int = 1, market: bool = False,
          stp: STPMode = STPMode.NONE) -> Place:
    return Place(f"c-{oid}", ts, oid, account, side, OrderType.MARKET if market else OrderType.LIMIT,
                 0 if market else price, qty, TimeInForce.IOC if market else TimeInForce.GTC, False, stp)


def outcome(engine: Engine, command: Place | Amend) -> OrderAccepted | OrderRejected:
    first = engine.apply(command)[0]
    assert isinstance(first, (OrderAccepted, OrderRejected)) or type(first).__name__ == "OrderAmended"
    return first  # type: ignore[return-value]


def reason(engine: Engine, command: Place | Amend) -> RejectCode | None:
    first = engine.apply(command)[0]
    return first.reason if isinstance(first, OrderRejected) else None


def test_quantity_and_notional_above_the_maximum_are_rejected() -> None:
    e = Engine(SPEC)
    assert reason(e, place("q", "a", SELL, 10, 1001)) is RejectCode.ABOVE_MAX_QTY
    assert reason(e, place("m", "a", BUY, 0, 1001, market=True)) is RejectCode.ABOVE_MAX_QTY
    assert reason(e, place("n", "a", SELL, 51, 1000)) is RejectCode.ABOVE_MAX_NOTIONAL
    assert reason(e, place("ok", "a", SELL, 50, 1000)) is None  # exactly at both limits
    # The first failing rule is the reason: below the minimum before above the maximum.
    assert reason(e, place("z", "a", SELL, 10, 0)) is RejectCode.INVALID_QTY


def test_the_hostile_sells_of_the_issue_are_rejected() -> None:
    # Two resting sells of qty 2^63 - 8 at 10^12 made a level total beyond a long.
    e = Engine(SPEC)
    huge = 9_223_372_036_854_775_800
    assert reason(e, place("h1", "x", SELL, 10**12, huge)) is RejectCode.ABOVE_MAX_QTY
    assert reason(e, place("h2", "x", SELL, 10**12, 1)) is RejectCode.ABOVE_MAX_NOTIONAL


def test_an_amend_cannot_exceed_the_maximum() -> None:
    e = Engine(SPEC)
    assert reason(e, place("o", "a", BUY, 40, 100)) is None
    assert reason(e, Amend("c-a1", 2, "o", "a", 2000, None)) is RejectCode.ABOVE_MAX_QTY
    assert reason(e, Amend("c-a2", 3, "o", "a", 1000, 60)) is RejectCode.ABOVE_MAX_NOTIONAL
    assert e.open_qty("o") == 100


def self_trade(e: Engine, n: int, price: int, ts: int) -> bool:
    """One account sells to itself at ``price``; True if it traded."""
    maker = e.apply(place(f"s{n}", "walker", SELL, price, 1, ts))
    taker = e.apply(place(f"b{n}", "walker", BUY, price, 1, ts))
    return isinstance(maker[0], OrderAccepted) and any(isinstance(ev, Trade) for ev in taker)


def test_self_trades_cannot_walk_the_price_within_an_interval() -> None:
    e = Engine(SPEC)
    assert self_trade(e, 0, 100, ts=1)  # the first trade sets the collar's reference: 100
    price, n = 100, 1
    while self_trade(e, n, price * 109 // 100, ts=1 + n):  # each step inside the 10 % band
        price = price * 109 // 100
        n += 1
    # Without the collar the band follows each trade: 100 -> 109 -> 118 -> ... for ever.
    assert price <= 120 and e.last_trade_price == price
    # Both sides are bounded: a sell far above the reference is refused, not only buys.
    assert reason(e, place("far", "x", SELL, 1000, 1, ts=100)) is RejectCode.PRICE_BAND


def test_the_collar_moves_once_per_interval() -> None:
    e = Engine(SPEC)
    assert self_trade(e, 0, 100, ts=1)
    assert self_trade(e, 1, 109, ts=2)
    assert reason(e, place("hi", "x", SELL, 125, 1, ts=3)) is RejectCode.PRICE_BAND  # 100 + 20 %
    # The next interval: the reference is the last trade price (109), the collar 87..130.
    assert reason(e, place("hi2", "x", SELL, 125, 1, ts=60_001)) is None
    assert reason(e, place("lo", "y", BUY, 86, 1, ts=60_002)) is RejectCode.PRICE_BAND
    # Walking from 100 to 10^6 needs log(10^4)/log(1.2) = 51 intervals of sustained self-trading.


def test_a_market_order_never_trades_beyond_its_side_of_the_collar() -> None:
    e = Engine(MarketSpec("C", tick=1, lot=1, min_qty=1, collar_num=20, collar_den=1, collar_interval_ms=1000))
    assert self_trade(e, 0, 100, ts=1)
    assert reason(e, place("a1", "m", SELL, 110, 5, ts=2)) is None
    assert reason(e, place("a2", "m", SELL, 120, 5, ts=2)) is None
    # A new interval with no trade meanwhile keeps the reference (100): asks at 110 and 120 are
    # inside, and a market buy of 10 takes both.
    events = e.apply(place("mb", "t", BUY, 0, 10, ts=1500, market=True))
    assert [ev.price for ev in events if isinstance(ev, Trade)] == [110, 120]
    # The reference moves to 120 at the next interval; then a buy limit at 90 is outside (96..144).
    assert reason(e, place("lb", "t", BUY, 90, 1, ts=2500)) is RejectCode.PRICE_BAND


def test_unbounded_specs_behave_as_the_conformance_rules_say() -> None:
    # No max, no collar: the band alone, and sells have no upper bound (rule 8).
    e = Engine(MarketSpec("U", tick=1, lot=1, min_qty=1, band_num=10, band_den=1))
    assert self_trade(e, 0, 100, ts=1)
    assert reason(e, place("far", "x", SELL, 10**12, 10**15, ts=2)) is None


def test_snapshots_keep_the_collar() -> None:
    e = Engine(SPEC)
    assert self_trade(e, 0, 100, ts=1)
    assert self_trade(e, 1, 109, ts=61_000)  # reference 100 until here; 109 from the next interval
    restored = Engine.restore(SPEC, e.snapshot())
    assert restored.state_hash() == e.state_hash()
    for engine in (e, restored):
        assert reason(engine, place("x", "x", SELL, 121, 1, ts=61_500)) is RejectCode.PRICE_BAND
    assert e.state_hash() == restored.state_hash()


def test_specs_without_bounds_hash_as_before() -> None:
    # A market spec without the new fields snapshots without them: replays of old logs keep
    # their recorded hashes.
    data = Engine(MarketSpec("U", tick=1, lot=1, min_qty=1)).snapshot()
    assert b"max_qty" not in data and b"collar" not in data
