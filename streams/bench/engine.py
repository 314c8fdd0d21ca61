"""Matching-engine throughput benchmark: a seeded standard workload, timed in-process on one core.

Workload (``make_workload``), generated in full *before* timing starts, deterministic per seed:

- one market: tick 5, lot 1, min qty 1 (integer units), price band 10 %; 200 accounts; prices
  around a fixed mid of 100,000; ``ts`` increases by 1 ms per command;
- 49 % passive limit GTC orders: buy below / sell above the mid by 1 + a geometric offset (mean
  ~8 ticks, capped at 60), 1 to 20 lots, 5 % of them post-only;
- 30 % cancels of a resting order picked at random (the generator follows its own commands with
  a scratch engine, so it knows which orders rest; the timed run uses a fresh engine). While the
  book holds fewer than 5,000 orders a cancel slot places a passive order instead, so the book
  fills up and then hovers around 5,000 resting orders (~40 per level) instead of draining;
- 8 % amends of a random resting order: 60 % size cuts (keep priority), 40 % price moves
  (re-queue, may cross);
- 10 % aggressive orders that cross the mid by 0 to 5 ticks: 60 % limit IOC, 20 % limit GTC (the
  remainder rests), 20 % market; 5 to 60 lots — these match, typically against several makers;
- 2.99 % invalid places (half zero quantity → invalid_qty, half off-tick → invalid_tick);
- 0.01 % cancel-all of one account;
- STP on every order: 70 % expire_maker, 10 % none, 10 % decrement, 5 % expire_taker,
  5 % expire_both (200 accounts, so self-matches do happen).

Measured mix of the default run (1,000,000 commands, seed 42): 50.2 % passive places, 28.8 %
cancels, 8.1 % amends, 10.0 % aggressive places, 3.0 % invalid places, 0.01 % cancel-alls;
~270,000 trades.

Timing (``run``): one fresh ``Engine``, ``gc.freeze()`` after generation (the workload's million
command objects are moved out of the collector's generations, as a service would do after
start-up; the collector stays enabled), then ``perf_counter`` (wall) and ``process_time`` (CPU)
around the apply loop only. ``commands_per_second`` is wall-clock based; ``cpu_seconds`` shows how
much of the wall time the process really ran (less on a busy machine). The state hash of the final
engine makes runs comparable: same seed → same hash.
"""

from __future__ import annotations

import gc
import random
import time
from dataclasses import dataclass

from streams.domain.commands import (
    Amend,
    Cancel,
    CancelAll,
    Command,
    OrderType,
    Place,
    Side,
    STPMode,
    TimeInForce,
)
from streams.domain.events import OrderAccepted, OrderCancelled, OrderExpired, OrderFilled, builder
from streams.domain.market import MarketSpec
from streams.engine import Engine

TICK = 5
SPEC = MarketSpec(market="BENCH-USD", tick=TICK, lot=1, min_qty=1, band_num=10, band_den=1)
MID = 100_000
ACCOUNTS = 200
BOOK_TARGET = 5_000  # resting orders the generator keeps the book near
_STP_MODES = [STPMode.EXPIRE_MAKER] * 14 + [STPMode.NONE] * 2 + [STPMode.DECREMENT] * 2
_STP_MODES += [STPMode.EXPIRE_TAKER, STPMode.EXPIRE_BOTH]

# Fast constructors (the frozen dataclasses' own __init__ is slow; see streams.domain.events.builder).
_Place = builder(Place)
_Cancel = builder(Cancel)
_Amend = builder(Amend)
_CancelAll = builder(CancelAll)


@dataclass(frozen=True, slots=True)
class BenchResult:
    commands: int
    events: int
    trades: int
    seconds: float
    cpu_seconds: float
    state_hash: str

    def as_dict(self) -> dict[str, object]:
        return {
            "commands_per_second": round(self.commands / self.seconds),
            "events_per_second": round(self.events / self.seconds),
            "commands": self.commands,
            "events": self.events,
            "trades": self.trades,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "state_hash": self.state_hash,
        }


def make_workload(n: int, seed: int) -> list[Command]:
    """The standard mix above, ``n`` commands, deterministic for ``seed``.

    A scratch engine follows the generated commands so that cancels and amends target orders that
    are really resting (as a client's would); the timed run uses a fresh engine.
    """
    rng = random.Random(seed)
    rand = rng.random
    randint = rng.randint
    accounts = [f"acct{i:03d}" for i in range(ACCOUNTS)]
    scratch = Engine(SPEC)
    live: list[str] = []  # ids of resting orders (random pick by index)
    where: dict[str, int] = {}  # order id -> index in ``live``
    owner: dict[str, tuple[str, Side]] = {}  # order id -> (account, side)
    out: list[Command] = []
    buy, sell = Side.BUY, Side.SELL
    limit, market = OrderType.LIMIT, OrderType.MARKET
    gtc, ioc = TimeInForce.GTC, TimeInForce.IOC
    ts0 = 1_700_000_000_000

    def offset() -> int:
        return min(60, 1 + int(rng.expovariate(1 / 7)))

    def drop(oid: str) -> None:
        i = where.pop(oid, None)
        if i is not None:
            last = live.pop()
            if last != oid:
                live[i] = last
                where[last] = i

    for i in range(n):
        ts = ts0 + i
        cid = f"c{i}"
        oid = f"o{i}"
        account = accounts[randint(0, ACCOUNTS - 1)]
        stp = _STP_MODES[randint(0, 19)]
        r = rand()
        cmd: Command
        if r < 0.49 or (r < 0.87 and not live) or (r < 0.79 and len(live) < BOOK_TARGET):
            side = buy if rand() < 0.5 else sell
            price = MID - TICK * offset() if side is buy else MID + TICK * offset()
            cmd = _Place(cid, ts, oid, account, side, limit, price, randint(1, 20), gtc, rand() < 0.05, stp)
        elif r < 0.79:
            target = live[randint(0, len(live) - 1)]
            cmd = _Cancel(cid, ts, target, owner[target][0])
        elif r < 0.87:
            target = live[randint(0, len(live) - 1)]
            acc, side = owner[target]
            if rand() < 0.6:
                open_qty = scratch.open_qty(target) or 1
                cmd = _Amend(cid, ts, target, acc, max(1, open_qty - randint(1, 5)), None)
            else:
                new_price = MID - TICK * offset() if side is buy else MID + TICK * offset()
                cmd = _Amend(cid, ts, target, acc, None, new_price)
        elif r < 0.97:
            side = buy if rand() < 0.5 else sell
            through = randint(0, 5)
            qty = randint(5, 60)
            kind = rand()
            if kind < 0.2:
                cmd = _Place(cid, ts, oid, account, side, market, 0, qty, ioc, False, stp)
            else:
                price = MID + TICK * through if side is buy else MID - TICK * through
                cmd = _Place(
                    cid, ts, oid, account, side, limit, price, qty, ioc if kind < 0.8 else gtc, False, stp
                )
        elif r < 0.9999:
            side = buy if rand() < 0.5 else sell
            price = MID - TICK * offset() if side is buy else MID + TICK * offset()
            if rand() < 0.5:
                cmd = _Place(cid, ts, oid, account, side, limit, price, 0, gtc, False, stp)
            else:
                cmd = _Place(cid, ts, oid, account, side, limit, price + 2, 5, gtc, False, stp)
        else:
            cmd = _CancelAll(cid, ts, account)
        out.append(cmd)
        for event in scratch.apply(cmd):
            if isinstance(event, OrderAccepted):
                owner[oid] = (account, event.side)
            elif isinstance(event, OrderFilled | OrderCancelled) or (
                isinstance(event, OrderExpired) and not event.remaining
            ):
                drop(event.order_id)
        if oid in owner and oid not in where and scratch.open_qty(oid) is not None:
            where[oid] = len(live)
            live.append(oid)
    return out


def run(n: int = 1_000_000, seed: int = 42) -> BenchResult:
    """Generate the workload, then time one engine applying it."""
    commands = make_workload(n, seed)
    engine = Engine(SPEC)
    apply = engine.apply
    gc.collect()
    gc.freeze()
    try:
        events = 0
        cpu_start = time.process_time()
        start = time.perf_counter()
        for cmd in commands:
            events += len(apply(cmd))
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    finally:
        gc.unfreeze()
    return BenchResult(len(commands), events, engine.trade_id, seconds, cpu_seconds, engine.state_hash())
