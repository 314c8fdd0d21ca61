"""Matching-engine throughput benchmark: a seeded standard workload, timed in-process on one core.

Workload (``make_workload``), generated in full *before* timing starts, deterministic per seed:
the standard mix of ``streams.loadgen.StandardMix`` on one market (tick 5, lot 1, min qty 1 in
integer units, price band 10 %, no bounds or collar; 200 accounts; prices around a fixed mid of
100,000; ``ts`` increases by 1 ms per command). Its cancels and amends aim at orders that really
rest: the generator follows its own commands with a scratch engine (the timed run uses a fresh
one). While the book holds fewer than 5,000 orders a cancel slot places a passive order
instead, so the book fills up and then hovers around 5,000 resting orders (~40 per level)
instead of draining.

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

from streams.domain.commands import Command, Place, Side
from streams.domain.events import OrderAccepted, OrderCancelled, OrderExpired, OrderFilled
from streams.domain.market import MarketSpec
from streams.engine import Engine
from streams.loadgen import StandardMix, Target

TICK = 5
SPEC = MarketSpec(market="BENCH-USD", tick=TICK, lot=1, min_qty=1, band_num=10, band_den=1)
MID = 100_000
ACCOUNTS = 200
BOOK_TARGET = 5_000  # resting orders the generator keeps the book near


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


class _Resting:
    """The benchmark's targets: the orders a scratch engine says are resting, picked at random
    without being removed (the engine's events remove them)."""

    def __init__(self) -> None:
        self.ids: list[str] = []  # resting order ids (random pick by index)
        self.where: dict[str, int] = {}  # order id -> index in ``ids``
        self.owner: dict[str, tuple[str, Side]] = {}  # order id -> (account, side)
        self.scratch = Engine(SPEC)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: int) -> Target:
        oid = self.ids[index]
        account, side = self.owner[oid]
        return oid, account, side, 0, self.scratch.open_qty(oid) or 1

    def placed(self, target: Target) -> None:
        """Resting orders are learnt from the scratch engine's events instead (``follow``)."""

    def follow(self, cmd: Command) -> None:
        oid = getattr(cmd, "order_id", "")
        for event in self.scratch.apply(cmd):
            if isinstance(event, OrderAccepted):
                self.owner[event.order_id] = (event.account, event.side)
            elif isinstance(event, OrderFilled | OrderCancelled) or (
                isinstance(event, OrderExpired) and not event.remaining
            ):
                self._drop(event.order_id)
        if isinstance(cmd, Place) and oid in self.owner and oid not in self.where and self.scratch.open_qty(oid):
            self.where[oid] = len(self.ids)
            self.ids.append(oid)

    def _drop(self, oid: str) -> None:
        i = self.where.pop(oid, None)
        if i is not None:
            last = self.ids.pop()
            if last != oid:
                self.ids[i] = last
                self.where[last] = i


def make_workload(n: int, seed: int) -> list[Command]:
    """The standard mix, ``n`` commands, deterministic for ``seed`` (module docstring)."""
    mix = StandardMix(random.Random(seed), keep_book=BOOK_TARGET)
    accounts = [f"acct{i:03d}" for i in range(ACCOUNTS)]
    resting = _Resting()
    out: list[Command] = []
    ts0 = 1_700_000_000_000
    for i in range(n):
        cmd = mix.command(SPEC, MID, f"c{i}", f"o{i}", ts0 + i, accounts, resting)
        out.append(cmd)
        resting.follow(cmd)
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
