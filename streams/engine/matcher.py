"""The matching engine of one market: commands in, events out. Pure and deterministic.

No clock, randomness, logging or I/O happens here (a lint rule and a test enforce the imports):
time enters only as a command's ``ts``, and the same commands always give the same events.

Semantics are the matching rules (docs/matching-rules.md, pinned by the scenarios in
tests/conformance/): price-time priority at the maker's price; limit GTC/IOC/FOK and market orders (always IOC, band-limited); post-only;
self-trade prevention decided by the taker's mode; cancel, cancel-all, amend; validation in the
rule-7 order; market states; price band against the last trade price. Inert unless the market
spec sets them (the registry always does; scenarios may): a maximum quantity and a
maximum notional per order (``above_max_qty``, ``above_max_notional``, checked after
``below_min_qty``), and a collar: every limit price, on either side, must lie within
``collar_pct`` of a reference price that moves only once per ``collar_interval_ms`` of command
time (to the last trade price then; the market's first trading command sets it to its last
trade price), rejected ``price_band``; a market
order never trades beyond the collar's edge on its side (a buy above it, a sell below it). The band of rule 8 moves with every trade and bounds only one side,
so self-trades could walk it anywhere; the collar cannot be walked faster than ``collar_pct``
per interval (docs/matching-rules.md).

Invariants:
- Every command yields exactly one outcome event (see ``streams.domain.events``); rejections are
  events and leave the state unchanged (apart from ``seq`` and ``last_ts``).
- ``seq`` is one gap-free counter over all events of the market from 1; ``trade_id`` is gap-free
  over trades from 1. An event's ``ts`` is max(command ts, last ts seen), so times never decrease.
- After every command the book is not crossed (best bid < best ask), no resting order has open
  quantity <= 0, and the order index and the levels agree (``check_invariants``). The hot path
  checks only that a resting remainder does not cross.
- An order id is "used" once an order with it was accepted; it can never be placed again in this
  market. Rejected places do not use up their id (a rejection has no side effects).
- Cancel-all cancels the account's orders in time priority of their entry to the book.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable
from itertools import pairwise
from typing import Any

from streams.domain.commands import (
    Amend,
    Cancel,
    CancelAll,
    Command,
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
    MarketStateChanged,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    RejectCode,
    Trade,
    builder,
)
from streams.domain.market import MarketSpec
from streams.engine import snapshot as _snapshot
from streams.engine.book import BookSide, Level, Order
from streams.engine.errors import InvariantBreach, SnapshotError

# Fast constructors of the frozen event dataclasses (see ``streams.domain.events.builder``).
_Accepted = builder(OrderAccepted)
_Rejected = builder(OrderRejected)
_Amended = builder(OrderAmended)
_Trade = builder(Trade)
_Filled = builder(OrderFilled)
_Cancelled = builder(OrderCancelled)
_Expired = builder(OrderExpired)
_CancelAllDone = builder(CancelAllDone)
_StateChanged = builder(MarketStateChanged)

_BUY = Side.BUY
_LIMIT = OrderType.LIMIT
_GTC = TimeInForce.GTC
_IOC = TimeInForce.IOC
_FOK = TimeInForce.FOK
_STP_NONE = STPMode.NONE
_EXPIRE_MAKER = STPMode.EXPIRE_MAKER
_EXPIRE_TAKER = STPMode.EXPIRE_TAKER
_DECREMENT = STPMode.DECREMENT
_ACTIVE = MarketState.ACTIVE
_HALTED = MarketState.HALTED
_POST_ONLY = MarketState.POST_ONLY

_R_DUPLICATE = RejectCode.DUPLICATE_ORDER_ID
_R_HALTED = RejectCode.MARKET_HALTED
_R_POST_ONLY_MODE = RejectCode.POST_ONLY_MODE
_R_QTY = RejectCode.INVALID_QTY
_R_PRICE = RejectCode.INVALID_PRICE
_R_TICK = RejectCode.INVALID_TICK
_R_LOT = RejectCode.INVALID_LOT
_R_MIN_QTY = RejectCode.BELOW_MIN_QTY
_R_BAND = RejectCode.PRICE_BAND
_R_CROSS = RejectCode.POST_ONLY_WOULD_CROSS
_R_FOK = RejectCode.FOK_UNFILLED
_R_UNKNOWN = RejectCode.UNKNOWN_ORDER
_R_MAX_QTY = RejectCode.ABOVE_MAX_QTY
_R_MAX_NOTIONAL = RejectCode.ABOVE_MAX_NOTIONAL

_X_IOC = ExpireReason.IOC_REMAINDER
_X_MARKET = ExpireReason.MARKET_REMAINDER
_X_MAKER = ExpireReason.STP_MAKER
_X_TAKER = ExpireReason.STP_TAKER
_X_DECREMENT = ExpireReason.STP_DECREMENT

_C_USER = CancelReason.USER
_C_ALL = CancelReason.CANCEL_ALL

# Above every possible price: the band edge of a buy when there is no band (or no trade yet).
_UNBOUNDED = 1 << 512

_new_order = object.__new__


class Engine:
    """One market's book and matcher. ``apply`` a command, get its events."""

    __slots__ = (
        "_asks",
        "_band",
        "_band_den",
        "_band_hi",
        "_band_lo",
        "_bids",
        "_buy_max",
        "_col_den",
        "_col_hi",
        "_col_hi_num",
        "_col_interval",
        "_col_lo",
        "_col_lo_num",
        "_col_ref",
        "_col_window",
        "_collar",
        "_dispatch",
        "_last_price",
        "_last_ts",
        "_lot",
        "_max_notional",
        "_max_qty",
        "_min_qty",
        "_orders",
        "_sell_min",
        "_seq",
        "_state",
        "_tick",
        "_trade_id",
        "_used",
        "spec",
    )

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self._tick = spec.tick
        self._lot = spec.lot
        self._min_qty = spec.min_qty
        # Band as exact integers: a buy at p is inside iff p*den <= last*hi, a sell iff p*den >= last*lo.
        self._band = spec.band_num is not None
        self._band_den = 100 * spec.band_den
        self._band_hi = 100 * spec.band_den + (spec.band_num or 0)
        self._band_lo = 100 * spec.band_den - (spec.band_num or 0)
        self._bids = BookSide(Side.BUY)
        self._asks = BookSide(Side.SELL)
        self._orders: dict[str, Order] = {}  # resting orders by id, in time priority of entry
        self._used: set[str] = set()  # every order id ever accepted in this market
        self._seq = 0
        self._trade_id = 0
        self._last_ts = 0
        self._state = _ACTIVE
        self._last_price = 0  # last trade price; 0 = the market has not traded
        self._buy_max = _UNBOUNDED  # highest buy price inside the band
        self._sell_min = 0  # lowest sell price inside the band
        self._max_qty = _UNBOUNDED if spec.max_qty is None else spec.max_qty
        self._max_notional = _UNBOUNDED if spec.max_notional is None else spec.max_notional
        # Collar as exact integers around the reference r: a price p (either side) is inside iff
        # r*lo_num <= p*den <= r*hi_num. The reference moves at the first command of a new
        # interval (to the last trade price) and at the market's first trade.
        self._collar = spec.collar_num is not None
        self._col_den = 100 * spec.collar_den
        self._col_hi_num = 100 * spec.collar_den + (spec.collar_num or 0)
        self._col_lo_num = 100 * spec.collar_den - (spec.collar_num or 0)
        self._col_interval = spec.collar_interval_ms
        self._col_ref = 0  # 0: no reference yet (the market has not traded)
        self._col_window = -1  # the interval (ts // collar_interval_ms) the reference belongs to
        self._col_lo = 0  # lowest price inside the collar
        self._col_hi = _UNBOUNDED  # highest price inside the collar
        self._dispatch: dict[type[Any], Callable[[Any, int], list[Event]]] = {
            Place: self._place,
            Cancel: self._cancel,
            Amend: self._amend,
            CancelAll: self._cancel_all,
            SetState: self._set_state,
        }

    # ------------------------------------------------------------------ reads

    @property
    def seq(self) -> int:
        """Seq of the last event emitted (0 before any)."""
        return self._seq

    @property
    def trade_id(self) -> int:
        """Id of the last trade (0 before any)."""
        return self._trade_id

    @property
    def last_ts(self) -> int:
        """Latest (clamped) command time seen."""
        return self._last_ts

    @property
    def market_state(self) -> MarketState:
        return self._state

    @property
    def last_trade_price(self) -> int | None:
        """Price of the last trade, the price band's reference (None before the first trade)."""
        return self._last_price or None

    def _side(self, side: Side) -> BookSide:
        return self._bids if side is _BUY else self._asks

    def best(self, side: Side) -> int | None:
        """Best price on ``side`` (highest bid / lowest ask), None if empty."""
        return self._side(side).best()

    def book_levels(self, side: Side, depth: int | None = None) -> list[tuple[int, int]]:
        """``(price, total open qty)`` per level of ``side``, best first, at most ``depth`` levels."""
        book = self._side(side)
        prices = book.prices()[:depth]
        return [(p, book.levels[p].total) for p in prices]

    def book_orders(self, side: Side, depth: int | None = None) -> list[tuple[int, list[tuple[str, int]]]]:
        """``(price, [(order_id, open qty), ...])`` per level, best first, orders in queue priority."""
        book = self._side(side)
        return [(p, [(o.order_id, o.open) for o in book.levels[p].live()]) for p in book.prices()[:depth]]

    def open_qty(self, order_id: str) -> int | None:
        """Open quantity of a resting order, None if ``order_id`` is not resting."""
        order = self._orders.get(order_id)
        return None if order is None else order.open

    def take_book_changes(self) -> list[tuple[Side, int, int]]:
        """Levels touched since the last call: ``(side, price, total open qty)``, 0 = level gone.

        Deterministic order: bids best (highest) first, then asks best (lowest) first. The set of
        touched levels is transient: it is not part of snapshots or the state hash.
        """
        out = [(Side.BUY, p, q) for p, q in self._bids.take_touched()]
        out.extend((Side.SELL, p, q) for p, q in self._asks.take_touched())
        return out

    def check_invariants(self) -> None:
        """Raise ``InvariantBreach`` unless the whole state is consistent (O(resting orders))."""
        orders = self._orders
        live = self._bids.check(orders) + self._asks.check(orders)
        if live != len(orders):
            raise InvariantBreach(f"{len(orders)} orders indexed but {live} live orders on the levels")
        bid, ask = self._bids.best(), self._asks.best()
        if bid is not None and ask is not None and bid >= ask:
            raise InvariantBreach(f"book crossed: best bid {bid} >= best ask {ask}")
        for oid, order in orders.items():
            if order.order_id != oid or order.open <= 0:
                raise InvariantBreach(f"order index entry {oid!r} is inconsistent: {order!r}")
            if oid not in self._used:
                raise InvariantBreach(f"resting order {oid!r} is not in the used-id set")
        entries = [o.entry for o in orders.values()]
        if any(a >= b for a, b in pairwise(entries)):
            raise InvariantBreach("order index is not in time priority of entry")
        if any(e > self._seq for e in entries):
            raise InvariantBreach("an order entered the book after the last event")
        if self._seq < self._trade_id or self._last_price < 0:
            raise InvariantBreach("counters inconsistent")

    # ------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """The whole state as canonical bytes (see ``streams.engine.snapshot``)."""
        return _snapshot.encode(
            _snapshot.State(
                spec=self.spec,
                seq=self._seq,
                trade_id=self._trade_id,
                last_ts=self._last_ts,
                state=self._state,
                last_price=self._last_price,
                used=self._used,
                bids=self._bids,
                asks=self._asks,
                collar=(self._col_ref, self._col_window) if self._collar else None,
            )
        )

    def state_hash(self) -> str:
        """Hex sha256 of ``snapshot()``: equal states give equal hashes on any process/platform."""
        return _snapshot.digest(self.snapshot())

    @classmethod
    def restore(cls, spec: MarketSpec, data: bytes) -> Engine:
        """An engine in exactly the state ``data`` (from ``snapshot()``) describes."""
        state = _snapshot.decode(spec, data)
        engine = cls(spec)
        engine._seq = state.seq
        engine._trade_id = state.trade_id
        engine._last_ts = state.last_ts
        engine._state = state.state
        engine._set_last_price(state.last_price)
        if state.collar is not None:
            engine._col_window = state.collar[1]
            engine._set_collar_reference(state.collar[0])
        engine._used = set(state.used)
        engine._bids = state.bids
        engine._asks = state.asks
        resting = [o for book in (state.bids, state.asks) for lv in book.levels.values() for o in lv.queue]
        resting.sort(key=lambda o: o.entry)
        engine._orders = {o.order_id: o for o in resting}
        state.bids.touched.clear()
        state.asks.touched.clear()
        engine.check_invariants()
        if engine.snapshot() != data:
            raise SnapshotError("snapshot bytes are not in canonical form")
        return engine

    # ------------------------------------------------------------- commands

    def apply(self, cmd: Command) -> list[Event]:
        """Apply one command; return its events in order (exactly one of them is the outcome)."""
        ts = cmd.ts
        if ts < self._last_ts:
            ts = self._last_ts
        else:
            self._last_ts = ts
        if self._collar and ts // self._col_interval != self._col_window:
            self._col_window = ts // self._col_interval
            if self._last_price:
                self._set_collar_reference(self._last_price)
        try:
            handler = self._dispatch[cmd.__class__]
        except KeyError:
            raise TypeError(f"not a command: {cmd!r}") from None
        return handler(cmd, ts)

    def _reject(self, order_id: str, account: str, reason: RejectCode, ts: int) -> list[Event]:
        seq = self._seq = self._seq + 1
        return [_Rejected(seq, ts, order_id, account, reason)]

    def _set_last_price(self, price: int) -> None:
        """Record the last trade price and the price band around it (rule 8), as exact integers:
        a buy at p is inside iff p*den <= last*hi, i.e. p <= floor(last*hi/den); a sell iff
        p*den >= last*lo, i.e. p >= ceil(last*lo/den)."""
        self._last_price = price
        if self._band and price:
            self._buy_max = (price * self._band_hi) // self._band_den
            self._sell_min = -((-price * self._band_lo) // self._band_den)
        else:
            self._buy_max = _UNBOUNDED
            self._sell_min = 0
        if self._collar and price and not self._col_ref:
            self._set_collar_reference(price)  # the market's first trade

    def _set_collar_reference(self, price: int) -> None:
        """The collar around ``price``: p is inside iff ceil(r*lo/den) <= p <= floor(r*hi/den)."""
        self._col_ref = price
        if price:
            self._col_hi = (price * self._col_hi_num) // self._col_den
            self._col_lo = -((-price * self._col_lo_num) // self._col_den)
        else:
            self._col_hi = _UNBOUNDED
            self._col_lo = 0

    def _place(self, c: Place, ts: int) -> list[Event]:
        oid = c.order_id
        account = c.account
        if oid in self._used:
            return self._reject(oid, account, _R_DUPLICATE, ts)
        is_limit = c.order_type is _LIMIT
        state = self._state
        if state is not _ACTIVE:
            if state is _HALTED:
                return self._reject(oid, account, _R_HALTED, ts)
            if not (c.post_only and is_limit):
                return self._reject(oid, account, _R_POST_ONLY_MODE, ts)
        qty = c.qty
        if qty <= 0:
            return self._reject(oid, account, _R_QTY, ts)
        side = c.side
        is_buy = side is _BUY
        if is_limit:
            price = c.price
            if price <= 0:
                return self._reject(oid, account, _R_PRICE, ts)
            if price % self._tick:
                return self._reject(oid, account, _R_TICK, ts)
            if qty % self._lot:
                return self._reject(oid, account, _R_LOT, ts)
            if qty < self._min_qty:
                return self._reject(oid, account, _R_MIN_QTY, ts)
            if qty > self._max_qty:
                return self._reject(oid, account, _R_MAX_QTY, ts)
            if price * qty > self._max_notional:
                return self._reject(oid, account, _R_MAX_NOTIONAL, ts)
            if (price > self._buy_max if is_buy else price < self._sell_min) or not (
                self._col_lo <= price <= self._col_hi
            ):
                return self._reject(oid, account, _R_BAND, ts)
            klim = -price if is_buy else price
            tif = c.tif
        else:
            if qty % self._lot:
                return self._reject(oid, account, _R_LOT, ts)
            if qty < self._min_qty:
                return self._reject(oid, account, _R_MIN_QTY, ts)
            if qty > self._max_qty:
                return self._reject(oid, account, _R_MAX_QTY, ts)
            price = 0
            # Market orders trade within the band and the collar.
            if is_buy:
                klim = -(self._buy_max if self._buy_max < self._col_hi else self._col_hi)
            else:
                klim = self._sell_min if self._sell_min > self._col_lo else self._col_lo
            tif = _IOC
        opposite = self._asks if is_buy else self._bids
        keys = opposite.keys
        crosses = keys[-1] >= klim if keys else False
        post_only = c.post_only
        if post_only and crosses:
            return self._reject(oid, account, _R_CROSS, ts)
        stp = c.stp
        if tif is _FOK and not _fok_fillable(opposite, klim, account, stp, qty):
            return self._reject(oid, account, _R_FOK, ts)

        self._used.add(oid)
        entry = self._seq = self._seq + 1
        events: list[Event] = [
            _Accepted(entry, ts, oid, account, side, c.order_type, price, qty, tif, post_only, stp)
        ]
        remaining = self._match(events, ts, oid, account, side, stp, qty, opposite, klim) if crosses else qty
        if remaining:
            if tif is _GTC:
                if keys and keys[-1] >= klim:
                    raise InvariantBreach(f"{oid}: resting remainder would cross the book")
                # Inlined Order(...) and BookSide.rest(order): this is the hottest path.
                order = _new_order(Order)
                order.order_id = oid
                order.account = account
                order.side = side
                order.price = price
                order.open = remaining
                order.post_only = post_only
                order.stp = stp
                order.entry = entry
                self._orders[oid] = order
                own = self._bids if is_buy else self._asks
                levels = own.levels
                level = levels.get(price)
                if level is None:
                    level = levels[price] = Level(price)
                    insort(own.keys, price if is_buy else -price)
                level.queue.append(order)
                level.total += remaining
                own.touched.add(price)
            else:
                seq = self._seq = self._seq + 1
                events.append(
                    _Expired(seq, ts, oid, account, remaining, 0, _X_IOC if is_limit else _X_MARKET)
                )
        return events

    def _match(
        self,
        events: list[Event],
        ts: int,
        oid: str,
        account: str,
        side: Side,
        stp: STPMode,
        remaining: int,
        book: BookSide,
        klim: int,
    ) -> int:
        """Match a taker against ``book`` up to limit key ``klim``; return its open remainder.

        Emits trades, fills and STP expiries. Returns 0 if the taker was filled or expired (its
        events are already emitted), else the quantity left once nothing crosses any more.
        """
        keys = book.keys
        levels = book.levels
        touched = book.touched
        is_bid_book = book.is_bid
        orders = self._orders
        seq = self._seq
        tid = start_tid = self._trade_id
        price = traded_at = 0
        filled = False
        check_stp = stp is not _STP_NONE
        while keys:
            key = keys[-1]
            if key < klim:
                break
            price = key if is_bid_book else -key
            level = levels[price]
            queue = level.queue
            touched.add(price)
            while True:
                maker = queue[0]
                if check_stp and maker.account == account:
                    if stp is _DECREMENT:
                        dec = remaining if remaining < maker.open else maker.open
                        maker.open -= dec
                        level.total -= dec
                        remaining -= dec
                        seq += 1
                        events.append(
                            _Expired(seq, ts, maker.order_id, maker.account, dec, maker.open, _X_DECREMENT)
                        )
                        seq += 1
                        events.append(_Expired(seq, ts, oid, account, dec, remaining, _X_DECREMENT))
                    else:
                        if stp is not _EXPIRE_TAKER:  # expire_maker, expire_both
                            seq += 1
                            events.append(
                                _Expired(seq, ts, maker.order_id, maker.account, maker.open, 0, _X_MAKER)
                            )
                            level.total -= maker.open
                            maker.open = 0
                        if stp is not _EXPIRE_MAKER:  # expire_taker, expire_both
                            seq += 1
                            events.append(_Expired(seq, ts, oid, account, remaining, 0, _X_TAKER))
                            remaining = 0
                else:
                    mopen = maker.open
                    tid += 1
                    seq += 1
                    traded_at = price
                    if remaining < mopen:  # the taker is done, the maker stays at the front
                        events.append(
                            _Trade(
                                seq,
                                ts,
                                tid,
                                price,
                                remaining,
                                maker.order_id,
                                maker.account,
                                oid,
                                account,
                                side,
                            )
                        )
                        maker.open = mopen - remaining
                        level.total -= remaining
                        remaining = 0
                        filled = True
                        break
                    events.append(
                        _Trade(seq, ts, tid, price, mopen, maker.order_id, maker.account, oid, account, side)
                    )
                    seq += 1
                    events.append(_Filled(seq, ts, maker.order_id, maker.account))
                    maker.open = 0
                    level.total -= mopen
                    remaining -= mopen
                    filled = remaining == 0
                if not maker.open:
                    queue.popleft()
                    del orders[maker.order_id]
                    if not level.total:
                        del levels[price]
                        keys.pop()
                        break
                    while not queue[0].open:
                        queue.popleft()
                        level.dead -= 1
                if remaining == 0:
                    break
            if remaining == 0:
                break
        if filled:
            seq += 1
            events.append(_Filled(seq, ts, oid, account))
        self._seq = seq
        if tid != start_tid:
            self._trade_id = tid
            if traded_at != self._last_price:
                self._set_last_price(traded_at)
        return remaining

    def _cancel(self, c: Cancel, ts: int) -> list[Event]:
        oid = c.order_id
        order = self._orders.get(oid)
        if order is None or order.account != c.account:
            return self._reject(oid, c.account, _R_UNKNOWN, ts)
        del self._orders[oid]
        qty = (self._bids if order.side is _BUY else self._asks).remove(order)
        seq = self._seq = self._seq + 1
        return [_Cancelled(seq, ts, oid, order.account, qty, _C_USER)]

    def _cancel_all(self, c: CancelAll, ts: int) -> list[Event]:
        account = c.account
        orders = self._orders
        mine = [o for o in orders.values() if o.account == account]
        seq = self._seq
        events: list[Event] = []
        for order in mine:
            del orders[order.order_id]
            qty = (self._bids if order.side is _BUY else self._asks).remove(order)
            seq += 1
            events.append(_Cancelled(seq, ts, order.order_id, account, qty, _C_ALL))
        seq += 1
        events.append(_CancelAllDone(seq, ts, account, len(mine)))
        self._seq = seq
        return events

    def _set_state(self, c: SetState, ts: int) -> list[Event]:
        self._state = c.state
        seq = self._seq = self._seq + 1
        return [_StateChanged(seq, ts, c.state)]

    def _amend(self, c: Amend, ts: int) -> list[Event]:
        oid = c.order_id
        account = c.account
        order = self._orders.get(oid)
        if order is None or order.account != account:
            return self._reject(oid, account, _R_UNKNOWN, ts)
        state = self._state
        if state is _HALTED:
            return self._reject(oid, account, _R_HALTED, ts)
        price = order.price if c.price is None else c.price
        qty = order.open if c.qty is None else c.qty
        requeue = price != order.price or qty > order.open
        if requeue and state is _POST_ONLY and not order.post_only:
            return self._reject(oid, account, _R_POST_ONLY_MODE, ts)
        if qty <= 0:
            return self._reject(oid, account, _R_QTY, ts)
        if price <= 0:
            return self._reject(oid, account, _R_PRICE, ts)
        if price % self._tick:
            return self._reject(oid, account, _R_TICK, ts)
        if qty % self._lot:
            return self._reject(oid, account, _R_LOT, ts)
        if qty < self._min_qty:
            return self._reject(oid, account, _R_MIN_QTY, ts)
        if qty > self._max_qty:
            return self._reject(oid, account, _R_MAX_QTY, ts)
        if price * qty > self._max_notional:
            return self._reject(oid, account, _R_MAX_NOTIONAL, ts)
        side = order.side
        is_buy = side is _BUY
        own = self._bids if is_buy else self._asks
        if not requeue:
            if qty != order.open:
                own.reduce(order, order.open - qty)
            seq = self._seq = self._seq + 1
            return [_Amended(seq, ts, oid, account, price, qty, False)]
        if (price > self._buy_max if is_buy else price < self._sell_min) or not (
            self._col_lo <= price <= self._col_hi
        ):
            return self._reject(oid, account, _R_BAND, ts)
        klim = -price if is_buy else price
        opposite = self._asks if is_buy else self._bids
        keys = opposite.keys
        crosses = keys[-1] >= klim if keys else False
        if order.post_only and crosses:
            return self._reject(oid, account, _R_CROSS, ts)

        del self._orders[oid]
        own.remove(order)
        entry = self._seq = self._seq + 1
        events: list[Event] = [_Amended(entry, ts, oid, account, price, qty, True)]
        remaining = (
            self._match(events, ts, oid, account, side, order.stp, qty, opposite, klim) if crosses else qty
        )
        if remaining:
            if keys and keys[-1] >= klim:
                raise InvariantBreach(f"{oid}: re-entered remainder would cross the book")
            new = Order(oid, account, side, price, remaining, order.post_only, order.stp, entry)
            self._orders[oid] = new
            own.rest(new)
        return events


def _fok_fillable(book: BookSide, klim: int, account: str, stp: STPMode, qty: int) -> bool:
    """Whether a FOK taker of ``qty`` would complete, walking ``book`` exactly as matching would.

    Fills and STP decrements count; an own order under expire_maker is skipped (it would be
    cancelled); an own order under expire_taker/expire_both ends the walk.
    """
    need = qty
    levels = book.levels
    is_bid_book = book.is_bid
    check_stp = stp is not _STP_NONE
    for key in reversed(book.keys):
        if key < klim:
            break
        for maker in levels[key if is_bid_book else -key].queue:
            mopen = maker.open
            if mopen == 0:
                continue
            if check_stp and maker.account == account:
                if stp is _EXPIRE_MAKER:
                    continue
                if stp is not _DECREMENT:
                    return False
            need -= mopen
            if need <= 0:
                return True
    return False
