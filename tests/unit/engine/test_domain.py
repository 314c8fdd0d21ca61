"""Domain commands and events: wire names, dict round trips, fast builders, outcome rule."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from streams.domain.commands import (
    Command,
    MarketState,
    OrderType,
    Side,
    STPMode,
    TimeInForce,
)
from streams.domain.events import (
    EVENT_TYPES,
    CancelReason,
    Event,
    OrderCancelled,
    Trade,
    builder,
    event_from_dict,
    event_to_dict,
    is_outcome,
)
from streams.engine import Engine
from tests.unit.engine.strategies import SPECS, generate


def _events_and_commands() -> tuple[list[Event], list[Command]]:
    spec = SPECS[1]
    commands = generate(spec, random.Random(2), 400)
    engine = Engine(spec)
    return [e for c in commands for e in engine.apply(c)], commands


def test_event_dict_round_trip_for_every_type() -> None:
    events, _ = _events_and_commands()
    assert {type(e) for e in events} == set(EVENT_TYPES.values())
    for event in events:
        d = event_to_dict(event)
        assert json.loads(json.dumps(d)) == d
        assert event_from_dict(d) == event


def test_exactly_one_outcome_per_command() -> None:
    spec = SPECS[0]
    engine = Engine(spec)
    for cmd in generate(spec, random.Random(9), 400):
        assert sum(map(is_outcome, engine.apply(cmd))) == 1


def test_builder_makes_real_frozen_instances() -> None:
    fast = builder(Trade)(1, 2, 3, 100, 5, "m", "a", "t", "b", Side.BUY)
    slow = Trade(1, 2, 3, 100, 5, "m", "a", "t", "b", Side.BUY)
    assert type(fast) is Trade and fast == slow and hash(fast) == hash(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.qty = 6  # type: ignore[misc]
    assert dataclasses.replace(fast, qty=6).qty == 6
    cancelled = builder(OrderCancelled)(1, 2, "o", "a", 3, CancelReason.USER)
    assert cancelled == OrderCancelled(1, 2, "o", "a", 3, CancelReason.USER)


def test_wire_names() -> None:
    assert [s.wire for s in Side] == ["buy", "sell"]
    assert [t.wire for t in OrderType] == ["limit", "market"]
    assert [t.wire for t in TimeInForce] == ["GTC", "IOC", "FOK"]
    assert [m.wire for m in STPMode] == ["none", "expire_maker", "expire_taker", "expire_both", "decrement"]
    assert [s.wire for s in MarketState] == ["active", "halted", "post_only"]
    assert (
        TimeInForce.from_wire("ioc") is TimeInForce.IOC
        and STPMode.from_wire("DECREMENT") is STPMode.DECREMENT
    )
    with pytest.raises(ValueError, match="unknown Side"):
        Side.from_wire("long")
