"""Stateful property test: random command streams, with the engine's properties checked after
every step, and a shadow engine restored from a mid-stream snapshot that must stay identical."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from streams.domain.commands import Amend, Command, Place, Side
from streams.domain.events import (
    CancelAllDone,
    Event,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    Trade,
    is_outcome,
)
from streams.domain.market import MarketSpec
from streams.engine import Engine
from tests.unit.engine.conftest import ENGINE_SETTINGS
from tests.unit.engine.strategies import SPECS, build, command_for, generate


def _flat(engine: Engine, side: Side) -> list[tuple[str, int]]:
    """(order_id, price) of every resting order of ``side`` in priority order."""
    return [(oid, price) for price, orders in engine.book_orders(side) for oid, _ in orders]


class EngineMachine(RuleBasedStateMachine):
    engine: Engine
    spec: MarketSpec

    def __init__(self) -> None:
        super().__init__()
        self.ts = 1_000
        self.n = 0
        self.shadow: Engine | None = None
        self.open: dict[str, int] = {}  # model open qty per order id, from the events
        self.original: dict[str, int] = {}  # accepted qty (+ amend adjustments)
        self.removed: dict[str, int] = {}  # filled + cancelled + expired qty per order id
        self.last_trade_id = 0
        self.l2: dict[Side, dict[int, int]] = {Side.BUY: {}, Side.SELL: {}}  # mirror fed by book changes

    @initialize(spec=st.sampled_from(SPECS))
    def start(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.engine = Engine(spec)

    # ----------------------------------------------------------------- steps

    def step(self, cmd: Command) -> None:
        engine = self.engine
        before_seq, before_ts = engine.seq, engine.last_ts
        taker_side = None
        if isinstance(cmd, Place):
            taker_side = cmd.side
        elif isinstance(cmd, Amend):
            for side in Side:
                if any(oid == cmd.order_id for oid, _ in _flat(engine, side)):
                    taker_side = side
        opposite = (
            None if taker_side is None else _flat(engine, Side.SELL if taker_side is Side.BUY else Side.BUY)
        )

        events = engine.apply(cmd)
        if self.shadow is not None:
            assert self.shadow.apply(cmd) == events
            assert self.shadow.state_hash() == engine.state_hash()

        self.check_counters(events, before_seq, max(before_ts, cmd.ts))
        assert sum(1 for e in events if is_outcome(e)) == 1, events
        if opposite is not None:
            self.check_priority(events, opposite)
        self.account(events, cmd)
        self.check_book_changes()

    def check_book_changes(self) -> None:
        """An L2 mirror fed only by ``take_book_changes`` equals the book's levels."""
        changes = self.engine.take_book_changes()
        assert len({(side, price) for side, price, _ in changes}) == len(changes)
        for side, price, qty in changes:
            if qty == 0:
                self.l2[side].pop(price, None)
            else:
                self.l2[side][price] = qty
        for side in Side:
            levels = self.engine.book_levels(side)
            assert sorted(self.l2[side].items(), reverse=side is Side.BUY) == levels

    def check_counters(self, events: list[Event], before_seq: int, ts: int) -> None:
        assert [e.seq for e in events] == list(range(before_seq + 1, before_seq + 1 + len(events)))
        assert all(e.ts == ts for e in events)
        assert self.engine.last_ts == ts
        for e in events:
            if isinstance(e, Trade):
                assert e.trade_id == self.last_trade_id + 1
                self.last_trade_id = e.trade_id
        assert self.engine.trade_id == self.last_trade_id

    def check_priority(self, events: list[Event], opposite: list[tuple[str, int]]) -> None:
        """Makers are consumed strictly in book order, each trade at the maker's price."""
        prices = dict(opposite)
        touched: list[str] = []
        taker_ids = {e.order_id for e in events if isinstance(e, OrderAccepted | OrderAmended)}
        for e in events:
            maker = None
            if isinstance(e, Trade):
                maker = e.maker_order_id
                assert e.price == prices[maker], f"trade not at the maker's price: {e}"
            elif isinstance(e, OrderExpired) and e.order_id not in taker_ids:
                maker = e.order_id
            if maker is not None and (not touched or touched[-1] != maker):
                touched.append(maker)
        assert touched == [oid for oid, _ in opposite[: len(touched)]], (touched, opposite)

    def account(self, events: list[Event], cmd: Command) -> None:
        """Quantity conservation per order: original = open + filled + cancelled + expired."""
        for e in events:
            if isinstance(e, OrderAccepted):
                assert e.order_id not in self.original, "an order id was accepted twice"
                self.original[e.order_id] = e.qty
                self.open[e.order_id] = e.qty
                self.removed[e.order_id] = 0
            elif isinstance(e, OrderAmended):
                # The new open quantity replaces the old: account the difference as original.
                self.original[e.order_id] += e.qty - self.open[e.order_id]
                self.open[e.order_id] = e.qty
            elif isinstance(e, Trade):
                for oid in (e.maker_order_id, e.taker_order_id):
                    self.open[oid] -= e.qty
                    self.removed[oid] += e.qty
                    assert self.open[oid] >= 0
            elif isinstance(e, OrderFilled):
                assert self.open[e.order_id] == 0
            elif isinstance(e, OrderCancelled):
                assert self.open[e.order_id] == e.qty > 0
                self.open[e.order_id] = 0
                self.removed[e.order_id] += e.qty
            elif isinstance(e, OrderExpired):
                self.open[e.order_id] -= e.qty
                self.removed[e.order_id] += e.qty
                assert self.open[e.order_id] == e.remaining >= 0
            elif isinstance(e, OrderRejected | CancelAllDone):
                pass
        for oid, original in self.original.items():
            assert original == self.open[oid] + self.removed[oid]
            resting = self.engine.open_qty(oid)
            assert (resting or 0) == self.open[oid], (
                f"{oid}: engine open {resting}, events say {self.open[oid]}"
            )

    # ----------------------------------------------------------------- rules

    @rule(raw=st.data(), dt=st.integers(-2, 5))
    def command(self, raw: st.DataObject, dt: int) -> None:
        self.ts += dt
        self.n += 1
        self.step(build(raw.draw(command_for(self.spec)), self.ts, self.n))

    @rule(seed=st.integers(0, 2**32 - 1))
    def dense_burst(self, seed: int) -> None:
        """Twenty commands from the dense generator (many crossings, STP, amends)."""
        base = self.ts
        for cmd in generate(self.spec, random.Random(seed), 20):
            self.n += 1
            self.ts = base + cmd.ts - 1_000
            self.step(replace(cmd, ts=self.ts, command_id=f"c{self.n}"))

    @precondition(lambda self: self.shadow is None)
    @rule()
    def snapshot_and_restore(self) -> None:
        data = self.engine.snapshot()
        self.shadow = Engine.restore(self.spec, data)
        assert self.shadow.snapshot() == data
        assert self.shadow.state_hash() == self.engine.state_hash()

    # ------------------------------------------------------------ invariants

    @invariant()
    def book_is_consistent(self) -> None:
        if not hasattr(self, "engine"):
            return
        self.engine.check_invariants()
        bid, ask = self.engine.best(Side.BUY), self.engine.best(Side.SELL)
        assert bid is None or ask is None or bid < ask


EngineMachine.TestCase.settings = settings(
    ENGINE_SETTINGS, max_examples=max(20, ENGINE_SETTINGS.max_examples // 3), stateful_step_count=30
)
TestEngineMachine = EngineMachine.TestCase
