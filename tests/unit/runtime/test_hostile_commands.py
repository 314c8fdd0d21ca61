"""Commands at and beyond every bound of the contract, through the partition's one entry point
(``PartitionState.process``): each is dead-lettered with a reason or handled by the engine, and
every output record of an accepted command encodes under its schema and fits its topic."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streams.domain.commands import Side
from streams.domain.market import LONG_MAX
from streams.markets import MarketRegistry
from streams.processors.matching import book_records
from streams.runtime.partition import PartitionState
from streams.runtime.records import IDENTIFIER_MAX_CHARS, event_record, trade_record
from streams.serde.codec import Codec
from streams.serde.topics import MD_BOOK, ORDERS_COMMANDS, ORDERS_EVENTS, TRADES
from streams.settings import load_settings

TOPIC_MAX_BYTES = 1_048_576  # max.message.bytes of the streams in infra/kafka/topics.yaml
NS = "xchg.v1."
REGISTRY = MarketRegistry.load(load_settings().markets_file)
MARKETS = [m.symbol for m in REGISTRY]
CODEC = Codec()

# Strings of every kind the contract must bound: empty, the maximum and one beyond, far beyond,
# control characters (NUL among them), non-ASCII letters and symbols.
identifiers = st.one_of(
    st.sampled_from(["a", "acct-1", "o" * IDENTIFIER_MAX_CHARS, "o" * (IDENTIFIER_MAX_CHARS + 1), "",
                     "x" * 10_000, "nul\x00id", "tab\tid", "\x7f", "ü-trader", "訂單-7", "😀" * 64,
                     "line\nbreak", "\u200b"]),
    st.text(min_size=0, max_size=80),
)
_EDGE_QTY = st.sampled_from([0, 1, 10, 100, 10**8, 10**8 + 100, 9_223_372_036_854_775_800, LONG_MAX, -1, -LONG_MAX])
quantities = st.one_of(_EDGE_QTY, _EDGE_QTY, _EDGE_QTY, st.integers(-LONG_MAX, LONG_MAX))
_EDGE_PRICE = st.sampled_from([0, 1, 100, 10**5, 10**7, 10**12, 10**18, LONG_MAX, -1])
prices = st.one_of(_EDGE_PRICE, _EDGE_PRICE, st.integers(1, 10**8), st.integers(-LONG_MAX, LONG_MAX))


@st.composite
def flows(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A few prices, quantities and names drawn once and used again and again, so that orders
    meet at the same levels (totals), trade with each other (notionals) and collide (ids)."""
    palette = {
        "price": draw(st.lists(prices, min_size=1, max_size=3)),
        "qty": draw(st.lists(quantities, min_size=1, max_size=3)),
        "id": draw(st.lists(identifiers, min_size=2, max_size=6)),
        "market": draw(st.lists(st.sampled_from([*MARKETS, "*", "NOPE-USD"]), min_size=1, max_size=2)),
    }
    return draw(st.lists(commands(palette), min_size=1, max_size=40))


@st.composite
def commands(draw: st.DrawFn, palette: dict[str, list[Any]]) -> dict[str, Any]:
    def pick(name: str, fresh: st.SearchStrategy[Any]) -> Any:
        return draw(st.sampled_from(palette[name])) if draw(st.integers(0, 9)) else draw(fresh)

    kind = draw(st.sampled_from(["PlaceOrder"] * 6 + ["CancelOrder", "AmendOrder", "CancelAll", "SetMarketState"]))
    order_id, account = pick("id", identifiers), pick("id", identifiers)
    body: dict[str, Any]
    if kind == "PlaceOrder":
        body = {"order_id": order_id, "account": account, "side": draw(st.sampled_from(["buy", "sell"])),
                "order_type": draw(st.sampled_from(["limit"] * 4 + ["market"])), "price": pick("price", prices),
                "qty": pick("qty", quantities), "tif": draw(st.sampled_from(["GTC", "GTC", "IOC", "FOK"])),
                "post_only": draw(st.booleans()), "stp": draw(st.sampled_from(["none", "expire_maker", "decrement"]))}
    elif kind == "CancelOrder":
        body = {"order_id": order_id, "account": account}
    elif kind == "AmendOrder":
        body = {"order_id": order_id, "account": account, "qty": pick("qty", st.none() | quantities),
                "price": pick("price", st.none() | prices)}
    elif kind == "CancelAll":
        body = {"account": account}
    else:
        body = {"state": draw(st.sampled_from(["active", "active", "halted", "post_only"]))}
    return {"command_id": pick("id", identifiers), "market": pick("market", st.sampled_from(MARKETS)),
            "body": (NS + kind, body)}


def fits(topic: str, record: dict[str, Any]) -> None:
    value = CODEC.encode(topic, record)
    assert len(value) <= TOPIC_MAX_BYTES, f"{topic} record of {len(value)} bytes"


def _sell(oid: str, price: int, qty: int) -> dict[str, Any]:
    return {"command_id": f"c-{oid}", "market": "BTC-USD", "body": (NS + "PlaceOrder", {
        "order_id": oid, "account": "hostile", "side": "sell", "order_type": "limit", "price": price, "qty": qty,
        "tif": "GTC", "post_only": False, "stp": "none"})}


def _self_trades(n: int) -> list[dict[str, Any]]:
    out, price = [], 10**5
    for i in range(n):
        price = price * 109 // 100
        out.append(_sell(f"s{i}", price, 100))
        buy = _sell(f"b{i}", price, 100)
        buy["body"][1]["side"] = "buy"
        out.append(buy)
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example([_sell("h1", 10**12, 9_223_372_036_854_775_800), _sell("h2", 10**12, 9_223_372_036_854_775_800)])
@example([*_self_trades(19), _sell("big", 10**8, 9_000_000_000_000_000_000)])
@given(flows())
def test_every_command_is_refused_with_a_reason_or_its_outputs_fit(flow: list[dict[str, Any]]) -> None:
    state = PartitionState(0, REGISTRY, CODEC)
    for offset, record in enumerate(flow):
        value = CODEC.encode(ORDERS_COMMANDS, record)
        result = state.process(offset, value, 1_700_000_000_000 + offset * 1000)
        if result.dead is not None:
            assert result.dead.reason and result.dead.detail
            assert len(result.dead.detail) < 1000 or result.dead.reason in ("invalid_command",)
            continue
        assert result.market is not None and result.command is not None and result.events
        for event in result.events:
            fits(ORDERS_EVENTS, event_record(result.market, event, result.command.command_id, 0, offset))
            if type(event).__name__ == "Trade":
                fits(TRADES, trade_record(result.market, event, result.command.command_id, 0, offset))
        engine = state.engine(result.market)
        changes = [(side, price, qty) for side in (Side.BUY, Side.SELL) for price, qty in engine.book_levels(side)]
        for part in book_records(result.market, engine.seq, 0, True, engine.last_ts, 0, offset, changes):
            fits(MD_BOOK, part)


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("command_id", "", "invalid_command_id"),
    ("command_id", "c" * 65, "invalid_command_id"),
    ("order_id", "o" * 350_000, "invalid_order_id"),
    ("account", "a" * 10_000, "invalid_account"),
    ("account", "nul\x00", "invalid_account"),
    ("order_id", "", "invalid_order_id"),
])
def test_identifiers_outside_the_contract_are_dead_lettered(field: str, value: str, reason: str) -> None:
    body = {"order_id": "o-1", "account": "a-1", "side": "buy", "order_type": "limit", "price": 100,
            "qty": 100, "tif": "GTC", "post_only": False, "stp": "none"}
    record: dict[str, Any] = {"command_id": "c-1", "market": "BTC-USD", "body": (NS + "PlaceOrder", body)}
    if field == "command_id":
        record["command_id"] = value
    else:
        body[field] = value
    state = PartitionState(0, REGISTRY, CODEC)
    result = state.process(0, CODEC.encode(ORDERS_COMMANDS, record), 1_700_000_000_000)
    assert result.dead is not None and result.dead.reason == reason
    assert len(result.dead.detail) < 200  # the offending value is not echoed in full
    assert state.engines == {}


def test_non_ascii_identifiers_within_the_limit_are_accepted() -> None:
    body = {"order_id": "訂單-1", "account": "ü-trader", "side": "buy", "order_type": "limit", "price": 100,
            "qty": 100, "tif": "GTC", "post_only": False, "stp": "none"}
    record = {"command_id": "c-ü", "market": "BTC-USD", "body": (NS + "PlaceOrder", body)}
    result = PartitionState(0, REGISTRY, CODEC).process(0, CODEC.encode(ORDERS_COMMANDS, record), 1_700_000_000_000)
    assert result.dead is None and type(result.events[0]).__name__ == "OrderAccepted"
