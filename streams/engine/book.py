"""The order book of one market: resting orders, price levels and their FIFO queues.

Representation (chosen for the matcher's hot path):
- ``Order`` is a mutable slots object; ``open`` is its open quantity in qty units.
- A ``Level`` holds a ``deque`` of orders in time priority, the level's ``total`` open quantity
  and the number of ``dead`` entries in the deque. Live orders have ``open > 0``, so a level is
  empty exactly when ``total == 0``.
- A ``BookSide`` maps price → Level and keeps a sorted list ``keys`` with the *best level last*:
  the key of a bid is its price, the key of an ask is minus its price. Both sides therefore
  read "key >= limit key" as "crosses the limit", and removing the best level is ``keys.pop()``.
- Removal from the middle of a queue is lazy: the order's ``open`` is set to 0 ("dead") and it
  stays in the deque until it reaches the front (dead orders are popped from the front at once)
  or the queue, once more than half dead, is compacted; ``total`` and ``dead`` are updated eagerly.

Invariants (checked by ``BookSide.check``, raising ``InvariantBreach``):
- ``keys`` is strictly ascending and holds exactly the keys of ``levels``; every level has live
  orders (``total > 0``), a live order at the front of its queue, ``total`` equal to the sum of
  its live orders' open quantities, ``dead`` equal to the number of dead entries in its queue,
  and live orders in strictly ascending ``entry`` (time priority; ``entry`` is the seq of the
  event that put the order on the book).
- A live order has ``open > 0``, sits at its own price on its own side, and is the very object
  indexed under its id in the engine's order index; a dead order (``open == 0``) is not indexed.
- Every changed level's price is recorded in ``touched`` until ``take_touched`` is called.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from itertools import pairwise
from operator import attrgetter

from streams.domain.commands import Side, STPMode
from streams.engine.errors import InvariantBreach

_open = attrgetter("open")  # truthy exactly for live orders


class Order:
    """A resting (or matching) order. ``open == 0`` marks an order removed from its queue."""

    __slots__ = ("account", "entry", "open", "order_id", "post_only", "price", "side", "stp")

    def __init__(
        self,
        order_id: str,
        account: str,
        side: Side,
        price: int,
        open_qty: int,
        post_only: bool,
        stp: STPMode,
        entry: int,
    ) -> None:
        self.order_id = order_id
        self.account = account
        self.side = side
        self.price = price
        self.open = open_qty
        self.post_only = post_only
        self.stp = stp
        self.entry = entry

    def __repr__(self) -> str:
        return f"Order({self.order_id!r}, {self.account!r}, {self.side.wire}, {self.price}, open={self.open})"


class Level:
    """One price level: FIFO queue of orders (may hold dead ones), live total, dead entries."""

    __slots__ = ("dead", "price", "queue", "total")

    def __init__(self, price: int) -> None:
        self.price = price
        self.queue: deque[Order] = deque()
        self.total = 0
        self.dead = 0

    def live(self) -> list[Order]:
        """Live orders in queue priority."""
        return [o for o in self.queue if o.open > 0]


class BookSide:
    """All levels of one side of the book."""

    __slots__ = ("is_bid", "keys", "levels", "side", "touched")

    def __init__(self, side: Side) -> None:
        self.side = side
        self.is_bid = side is Side.BUY
        self.levels: dict[int, Level] = {}
        self.keys: list[int] = []  # ascending; best level last (bids: price, asks: -price)
        self.touched: set[int] = set()

    def key(self, price: int) -> int:
        return price if self.is_bid else -price

    def best(self) -> int | None:
        """Best price of this side, or None if the side is empty."""
        if not self.keys:
            return None
        k = self.keys[-1]
        return k if self.is_bid else -k

    def rest(self, order: Order) -> None:
        """Append ``order`` (live, ``open > 0``) at the back of its price level."""
        price = order.price
        level = self.levels.get(price)
        if level is None:
            level = self.levels[price] = Level(price)
            insort(self.keys, price if self.is_bid else -price)
        level.queue.append(order)
        level.total += order.open
        self.touched.add(price)

    def drop_level(self, price: int) -> None:
        """Remove the (now empty) level at ``price``."""
        del self.levels[price]
        keys = self.keys
        key = price if self.is_bid else -price
        if keys[-1] == key:
            keys.pop()
        else:
            del keys[bisect_left(keys, key)]

    def remove(self, order: Order) -> int:
        """Take a live order off the book (lazily); returns the open quantity removed."""
        qty = order.open
        price = order.price
        level = self.levels[price]
        level.total -= qty
        order.open = 0
        self.touched.add(price)
        if not level.total:
            self.drop_level(price)
            return qty
        queue = level.queue
        if queue[0] is order:
            queue.popleft()
            while not queue[0].open:
                queue.popleft()
                level.dead -= 1
        else:
            dead = level.dead = level.dead + 1
            if dead > 32 and 2 * dead > len(queue):
                level.queue = deque(filter(_open, queue))  # C-speed compaction
                level.dead = 0
        return qty

    def reduce(self, order: Order, qty: int) -> None:
        """Lower a live order's open quantity by ``qty`` (< open), keeping its priority."""
        order.open -= qty
        self.levels[order.price].total -= qty
        self.touched.add(order.price)

    def prices(self) -> list[int]:
        """Prices best first."""
        return [k if self.is_bid else -k for k in reversed(self.keys)]

    def take_touched(self) -> list[tuple[int, int]]:
        """Levels changed since the last call as ``(price, total)`` (0 = gone), best first."""
        touched = sorted(self.touched, reverse=self.is_bid)
        self.touched = set()
        levels = self.levels
        return [(p, levels[p].total if p in levels else 0) for p in touched]

    def check(self, index: dict[str, Order]) -> int:
        """Verify this side's invariants against the order index; returns the live order count."""
        name = self.side.wire
        keys = self.keys
        if any(a >= b for a, b in pairwise(keys)):
            raise InvariantBreach(f"{name}: level keys not strictly ascending")
        if sorted(self.key(p) for p in self.levels) != keys:
            raise InvariantBreach(f"{name}: level keys disagree with levels")
        live_total = 0
        for price, level in self.levels.items():
            if level.price != price:
                raise InvariantBreach(f"{name} {price}: level filed under the wrong price")
            queue = level.queue
            if not queue or queue[0].open <= 0:
                raise InvariantBreach(f"{name} {price}: front of queue is not a live order")
            total = count = dead = 0
            last_entry = -1
            for o in queue:
                if o.open < 0:
                    raise InvariantBreach(f"{name} {price}: order {o.order_id} has negative open quantity")
                if o.open == 0:
                    if index.get(o.order_id) is o:
                        raise InvariantBreach(f"{name} {price}: removed order {o.order_id} still indexed")
                    dead += 1
                    continue
                if index.get(o.order_id) is not o:
                    raise InvariantBreach(f"{name} {price}: resting order {o.order_id} not indexed")
                if o.price != price or o.side is not self.side:
                    raise InvariantBreach(f"{name} {price}: order {o.order_id} on the wrong level")
                if o.entry <= last_entry:
                    raise InvariantBreach(f"{name} {price}: queue out of time priority at {o.order_id}")
                last_entry = o.entry
                total += o.open
                count += 1
            if count == 0 or dead != level.dead or total != level.total:
                raise InvariantBreach(
                    f"{name} {price}: level says total={level.total} dead={level.dead}, "
                    f"queue has {count} live orders, total={total} dead={dead}"
                )
            live_total += count
        return live_total
