"""Seeded order flow: the standard mix of commands over one or more markets.

``StandardMix`` is the one definition of the mix, shared by the load generator (``OrderFlow``,
deterministic per seed, no feedback from the engine: cancels and amends aim at recently placed
orders) and the engine benchmark (``streams.bench.engine``, which follows a scratch engine so
that they aim at resting ones). Per command, prices relative to a fixed mid per market, in ticks:

- 49 % passive limit GTC orders, 1 + a geometric offset (mean ~8 ticks, capped at 60) away from
  the mid, 1 to 20 lots, 5 % post-only;
- 30 % cancels of a recently placed order (some have filled meanwhile → ``unknown_order``);
- 8 % amends of a recent order: 60 % size cuts (keep priority), 40 % price moves (re-queue);
- 10 % aggressive orders crossing the mid by 0 to 5 ticks, 5 to 60 lots: 60 % limit IOC, 20 %
  limit GTC, 20 % market;
- 2.99 % invalid places (half zero quantity, half off-tick price, or off-lot quantity where the
  tick is 1) → coded rejects;
- 0.01 % cancel-all of one account;
- self-trade prevention on every order: 70 % expire_maker, 10 % none, 10 % decrement,
  5 % expire_taker, 5 % expire_both.

``xchg loadgen`` produces the flow to ``orders.commands`` at a fixed rate (keyed by market, the
idempotent murmur2 producer), pacing by a schedule so that a slow broker delays sends instead of
silently lowering the offered load.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from confluent_kafka import Producer

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
from streams.domain.market import MarketSpec
from streams.runtime.namespace import DEFAULT, Namespace
from streams.runtime.records import command_to_record
from streams.serde.codec import Codec
from streams.serde.topics import ORDERS_COMMANDS

DEFAULT_MID_TICKS = 100_000
POOL_CAP = 20_000
_STP = [STPMode.EXPIRE_MAKER] * 14 + [STPMode.NONE] * 2 + [STPMode.DECREMENT] * 2
_STP += [STPMode.EXPIRE_TAKER, STPMode.EXPIRE_BOTH]
BUY, SELL = Side.BUY, Side.SELL
LIMIT, MARKET = OrderType.LIMIT, OrderType.MARKET
GTC, IOC = TimeInForce.GTC, TimeInForce.IOC

Target = tuple[str, str, Side, int, int]  # (order_id, account, side, price, open qty)


class Targets(Protocol):
    """Where a generator's cancels and amends aim: orders it believes are resting."""

    def __len__(self) -> int: ...

    def take(self, index: int) -> Target:
        """The target at ``index`` (0 <= index < len); a generator that tracks its own orders
        forgets it (an amend gives it back through ``placed``)."""
        ...

    def placed(self, target: Target) -> None:
        """A place or amend the mix just made (a generator fed by an engine may ignore it)."""
        ...


class StandardMix:
    """The standard command mix (module docstring) drawn from ``rng``, the same draws in the same
    order for every generator: the seed alone fixes the commands.

    ``keep_book``: while fewer targets rest, cancel slots place passive orders instead, so that
    a book fed by the mix fills up to about that depth (the benchmark) instead of draining."""

    def __init__(self, rng: random.Random, keep_book: int = 0) -> None:
        self.rng = rng
        self.keep_book = keep_book

    def offset(self) -> int:
        """Ticks away from the mid of a passive price: 1 + geometric (mean ~8), at most 60."""
        return min(60, 1 + int(self.rng.expovariate(1 / 7)))

    def command(self, spec: MarketSpec, mid: int, cid: str, oid: str, ts: int, accounts: list[str],
                targets: Targets) -> Command:
        rng = self.rng
        rand, randint = rng.random, rng.randint
        tick, lot = spec.tick, spec.lot
        lots_min = -(-spec.min_qty // lot)
        account = accounts[randint(0, len(accounts) - 1)]
        stp = _STP[randint(0, 19)]
        r = rand()
        cmd: Command
        if r < 0.49 or (r < 0.87 and not len(targets)) or (r < 0.79 and len(targets) < self.keep_book):
            side = BUY if rand() < 0.5 else SELL
            price = mid - tick * self.offset() if side is BUY else mid + tick * self.offset()
            qty = lot * randint(lots_min, lots_min + 19)
            cmd = Place(cid, ts, oid, account, side, LIMIT, price, qty, GTC, rand() < 0.05, stp)
            targets.placed((oid, account, side, price, qty))
        elif r < 0.79:
            target, owner, _, _, _ = targets.take(randint(0, len(targets) - 1))
            cmd = Cancel(cid, ts, target, owner)
        elif r < 0.87:
            target, owner, side, price, qty = targets.take(randint(0, len(targets) - 1))
            if rand() < 0.6:
                new_qty = max(lot * lots_min, qty - lot * randint(1, 5))
                cmd = Amend(cid, ts, target, owner, new_qty, None)
                targets.placed((target, owner, side, price, new_qty))
            else:
                new_price = mid - tick * self.offset() if side is BUY else mid + tick * self.offset()
                cmd = Amend(cid, ts, target, owner, None, new_price)
                targets.placed((target, owner, side, new_price, qty))
        elif r < 0.97:
            side = BUY if rand() < 0.5 else SELL
            through = randint(0, 5)
            qty = lot * randint(lots_min + 4, lots_min + 59)
            kind = rand()
            if kind < 0.2:
                cmd = Place(cid, ts, oid, account, side, MARKET, 0, qty, IOC, False, stp)
            else:
                price = mid + tick * through if side is BUY else mid - tick * through
                cmd = Place(cid, ts, oid, account, side, LIMIT, price, qty, IOC if kind < 0.8 else GTC, False, stp)
        elif r < 0.9999:
            side = BUY if rand() < 0.5 else SELL
            price = mid - tick * self.offset() if side is BUY else mid + tick * self.offset()
            qty = lot * lots_min
            if rand() < 0.5 or (tick == 1 and lot == 1):
                qty = 0  # invalid_qty
            elif tick > 1:
                price += 1  # invalid_tick
            else:
                qty += 1  # invalid_lot
            cmd = Place(cid, ts, oid, account, side, LIMIT, price, qty, GTC, False, stp)
        else:
            cmd = CancelAll(cid, ts, account)
        return cmd


class _Pool:
    """The load generator's targets: recently placed orders, at most ``POOL_CAP`` (some have
    filled or been cancelled meanwhile: their cancels are ``unknown_order``)."""

    def __init__(self) -> None:
        self.orders: list[Target] = []

    def __len__(self) -> int:
        return len(self.orders)

    def take(self, index: int) -> Target:
        orders = self.orders
        orders[index], orders[-1] = orders[-1], orders[index]
        return orders.pop()

    def placed(self, target: Target) -> None:
        self.orders.append(target)
        if len(self.orders) > POOL_CAP:
            self.orders[0] = self.orders[-1]
            self.orders.pop()


@dataclass
class _Market:
    spec: MarketSpec
    mid: int  # price units
    pool: _Pool


class OrderFlow:
    def __init__(self, specs: list[MarketSpec], seed: int, accounts: int = 200,
                 mid_ticks: int = DEFAULT_MID_TICKS, prefix: str = "") -> None:
        if not specs:
            raise ValueError("order flow needs at least one market")
        self.rng = random.Random(seed)
        self.mix = StandardMix(self.rng)
        self.markets = [_Market(s, s.tick * mid_ticks, _Pool()) for s in specs]
        self.accounts = [f"acct{i:03d}" for i in range(accounts)]
        self.prefix = prefix or f"s{seed}-"
        self.count = 0

    def next(self, ts: int = 0) -> tuple[str, Command]:
        """The next ``(market, command)``; ``ts`` is only used by in-process runs."""
        i = self.count
        self.count += 1
        markets = self.markets
        m = markets[self.rng.randint(0, len(markets) - 1)] if len(markets) > 1 else markets[0]
        cmd = self.mix.command(m.spec, m.mid, f"{self.prefix}c{i}", f"{self.prefix}o{i}", ts, self.accounts, m.pool)
        return m.spec.market, cmd

    def __iter__(self) -> Iterator[tuple[str, Command]]:
        while True:
            yield self.next()


class EncodedCommand(NamedTuple):
    key: bytes  # the market
    command_id: str
    value: bytes


@dataclass
class LoadReport:
    sent: int
    seconds: float
    per_market: dict[str, int]
    late_max_ms: float  # how far behind its schedule the producer fell at worst

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def encode_flow(flow: OrderFlow, codec: Codec, count: int) -> Iterator[EncodedCommand]:
    """The next ``count`` commands of ``flow``, encoded for ``orders.commands``."""
    encode = codec.encode
    for _ in range(count):
        market, cmd = flow.next()
        yield EncodedCommand(market.encode(), cmd.command_id, encode(ORDERS_COMMANDS, command_to_record(market, cmd)))


def produce_flow(
    producer: Producer,
    codec: Codec,
    flow: OrderFlow,
    count: int,
    rate: float | None,
    on_send: Callable[[str, float], None] | None = None,
    progress: Callable[[int], None] | None = None,
    ns: Namespace = DEFAULT,
) -> LoadReport:
    """Send ``count`` commands of ``flow`` at ``rate`` per second (None: as fast as possible),
    encoding each as it goes; see ``send_commands``."""
    return send_commands(producer, encode_flow(flow, codec, count), rate, on_send, progress, ns)


def send_commands(
    producer: Producer,
    commands: Iterable[EncodedCommand],
    rate: float | None,
    on_send: Callable[[str, float], None] | None = None,
    progress: Callable[[int], None] | None = None,
    ns: Namespace = DEFAULT,
) -> LoadReport:
    """Send ``commands`` at ``rate`` per second (None: as fast as possible).

    Pacing follows a fixed schedule: command *i* is due at ``start + i / rate``; ``on_send`` gets
    each command id with its *scheduled* time, so latency measured from it includes any queueing
    the producer itself caused (no coordinated omission). A benchmark passes a list encoded in
    advance, so that the encoding does not compete for CPU with what it measures."""
    per_key: dict[bytes, int] = {}
    start = time.monotonic()
    late_max = 0.0
    topic = ns(ORDERS_COMMANDS)
    sent = 0
    for i, (key, command_id, value) in enumerate(commands):
        due = start + i / rate if rate else time.monotonic()
        if rate:
            now = time.monotonic()
            if due - now > 0.001:  # ahead by over a millisecond: wait (sends go out in ~1 ms bursts)
                time.sleep(due - now)
            elif now > due:
                late_max = max(late_max, now - due)
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        if on_send is not None:
            on_send(command_id, due)
        per_key[key] = per_key.get(key, 0) + 1
        sent += 1
        if i % 1000 == 0:
            producer.poll(0)
            if progress is not None:
                progress(i)
    producer.flush(60)
    per_market = {key.decode(): n for key, n in per_key.items()}
    return LoadReport(sent, time.monotonic() - start, per_market, late_max * 1000)
