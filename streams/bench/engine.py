"""Matching-engine throughput benchmark: a seeded standard workload, timed in-process on one core.

Workload (``make_workload``), generated in full *before* timing starts, deterministic per seed:

- one market: tick 5, lot 1, min qty 1 (integer units), price band 10 %; 200 accounts; prices
  around a fixed mid of 100,000; ``ts`` increases by 1 ms per command;
- 49 % passive limit GTC orders: buy below / sell above the mid by 1 + a geometric offset (mean
  ~8 ticks, capped at 60), 1 to 20 lots, 5 % of them post-only;
- 30 % cancels of an order picked at random from the generator's pool of recently placed orders
  (the generator does not run the engine, so some targets have filled meanwhile → unknown_order);
- 8 % amends of a pooled order: 60 % size cuts (keep priority), 40 % price moves (re-queue);
- 10 % aggressive orders that cross the mid by 0 to 5 ticks: 60 % limit IOC, 20 % limit GTC (the
  remainder rests), 20 % market; 5 to 60 lots — these match, typically against several makers;
- 2.99 % invalid places (half zero quantity → invalid_qty, half off-tick → invalid_tick);
- 0.01 % cancel-all of one account;
- STP on every order: 70 % expire_maker, 10 % none, 10 % decrement, 5 % expire_taker,
  5 % expire_both (200 accounts, so self-matches do happen).

Timing (``run``): one fresh ``Engine``, ``gc.freeze()`` after generation (the workload's million
command objects are moved out of the collector's generations, as a service would do after
start-up; the collector stays enabled), then ``perf_counter`` around the apply loop only. The
state hash of the final engine makes runs comparable: same seed → same hash.
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
from streams.domain.events import builder
from streams.domain.market import MarketSpec
from streams.engine import Engine

TICK = 5
SPEC = MarketSpec(market="BENCH-USD", tick=TICK, lot=1, min_qty=1, band_num=10, band_den=1)
MID = 100_000
ACCOUNTS = 200
POOL_CAP = 20_000
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
    state_hash: str

    def as_dict(self) -> dict[str, object]:
        return {
            "commands_per_second": round(self.commands / self.seconds),
            "events_per_second": round(self.events / self.seconds),
            "commands": self.commands,
            "events": self.events,
            "trades": self.trades,
            "seconds": round(self.seconds, 3),
            "state_hash": self.state_hash,
        }


def make_workload(n: int, seed: int) -> list[Command]:
    """The standard mix above, ``n`` commands, deterministic for ``seed``."""
    rng = random.Random(seed)
    rand = rng.random
    randint = rng.randint
    accounts = [f"acct{i:03d}" for i in range(ACCOUNTS)]
    pool: list[tuple[str, str, Side, int, int]] = []  # (order_id, account, side, price, qty)
    out: list[Command] = []
    append = out.append
    buy, sell = Side.BUY, Side.SELL
    limit, market = OrderType.LIMIT, OrderType.MARKET
    gtc, ioc = TimeInForce.GTC, TimeInForce.IOC
    ts0 = 1_700_000_000_000

    def offset() -> int:
        return min(60, 1 + int(rng.expovariate(1 / 7)))

    def pick() -> tuple[str, str, Side, int, int]:
        i = randint(0, len(pool) - 1)
        pool[i], pool[-1] = pool[-1], pool[i]
        return pool.pop()

    for i in range(n):
        ts = ts0 + i
        cid = f"c{i}"
        account = accounts[randint(0, ACCOUNTS - 1)]
        stp = _STP_MODES[randint(0, 19)]
        r = rand()
        if r < 0.49 or (r < 0.87 and not pool):
            side = buy if rand() < 0.5 else sell
            price = MID - TICK * offset() if side is buy else MID + TICK * offset()
            qty = randint(1, 20)
            oid = f"o{i}"
            append(_Place(cid, ts, oid, account, side, limit, price, qty, gtc, rand() < 0.05, stp))
            pool.append((oid, account, side, price, qty))
            if len(pool) > POOL_CAP:
                pool[0] = pool[-1]  # forget an old one (order of the pool does not matter)
                pool.pop()
        elif r < 0.79:
            oid, acc, _, _, _ = pick()
            append(_Cancel(cid, ts, oid, acc))
        elif r < 0.87:
            oid, acc, side, price, qty = pick()
            if rand() < 0.6:
                new_qty = max(1, qty - randint(1, 5))
                append(_Amend(cid, ts, oid, acc, new_qty, None))
                pool.append((oid, acc, side, price, new_qty))
            else:
                new_price = MID - TICK * offset() if side is buy else MID + TICK * offset()
                append(_Amend(cid, ts, oid, acc, None, new_price))
                pool.append((oid, acc, side, new_price, qty))
        elif r < 0.97:
            side = buy if rand() < 0.5 else sell
            through = randint(0, 5)
            qty = randint(5, 60)
            kind = rand()
            oid = f"o{i}"
            if kind < 0.2:
                append(_Place(cid, ts, oid, account, side, market, 0, qty, ioc, False, stp))
            else:
                price = MID + TICK * through if side is buy else MID - TICK * through
                tif = ioc if kind < 0.8 else gtc
                append(_Place(cid, ts, oid, account, side, limit, price, qty, tif, False, stp))
        elif r < 0.9999:
            side = buy if rand() < 0.5 else sell
            price = MID - TICK * offset() if side is buy else MID + TICK * offset()
            if rand() < 0.5:
                append(_Place(cid, ts, f"o{i}", account, side, limit, price, 0, gtc, False, stp))
            else:
                append(_Place(cid, ts, f"o{i}", account, side, limit, price + 2, 5, gtc, False, stp))
        else:
            append(_CancelAll(cid, ts, account))
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
        start = time.perf_counter()
        for cmd in commands:
            events += len(apply(cmd))
        seconds = time.perf_counter() - start
    finally:
        gc.unfreeze()
    return BenchResult(len(commands), events, engine.trade_id, seconds, engine.state_hash())
