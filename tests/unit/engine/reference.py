"""A deliberately naive reference matcher, written straight from the conformance rules.

No performance tricks: the book is a plain list of orders, re-sorted every time it is read;
prices in the band are checked with ``Fraction``; a FOK order is tried on a deep copy of the
whole matcher and kept only if it completes. Events are built with the ordinary (slow) frozen
dataclass constructors. The differential test feeds it and ``Engine`` the same random streams
and requires identical events and books.

Event conventions it shares with the engine (they are not in the rules, so both must agree):
taker events after its ``OrderAccepted``/``OrderAmended``; per trade ``Trade`` then the maker's
``OrderFilled`` if it is done; the taker's ``OrderFilled`` right after its last trade; STP events
maker first, then taker; cancel-all in time priority of entry; a resting order's time priority is
the seq of the event that put it on the book.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from fractions import Fraction
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
)
from streams.domain.market import MarketSpec


@dataclass
class RefOrder:
    order_id: str
    account: str
    side: Side
    price: int  # 0 for a market taker
    open: int
    post_only: bool
    stp: STPMode
    time: int  # seq of the event that put it on the book


class Reference:
    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.book: list[RefOrder] = []
        self.used: set[str] = set()
        self.seq = 0
        self.trade_id = 0
        self.last_ts = 0
        self.state = MarketState.ACTIVE
        self.last_price: int | None = None
        self.out: list[Event] = []
        self.ts = 0
        self.band_reference: int | None = None
        self.collar_reference: int | None = None  # None: the market has not traded
        self.collar_window = -1
        self.collar_at_arrival: int | None = None

    # ---------------------------------------------------------------- helpers

    def emit(self, cls: Any, **fields: Any) -> int:
        self.seq += 1
        self.out.append(cls(seq=self.seq, ts=self.ts, **fields))
        return self.seq

    def reject(self, order_id: str, account: str, reason: RejectCode) -> None:
        self.emit(OrderRejected, order_id=order_id, account=account, reason=reason)

    def side_orders(self, side: Side) -> list[RefOrder]:
        """Resting orders of ``side`` in priority order (best price, then earliest)."""
        mine = [o for o in self.book if o.side is side]
        if side is Side.BUY:
            return sorted(mine, key=lambda o: (-o.price, o.time))
        return sorted(mine, key=lambda o: (o.price, o.time))

    def band_allows(self, side: Side, price: int, reference: int | None,
                    collar_reference: int | None = None) -> bool:
        """Rule 8, against the last trade price ``reference`` (None: never traded), and the
        collar: either side within collar_pct of ``collar_reference``."""
        if self.spec.collar_num is not None and collar_reference is not None:
            pct = Fraction(self.spec.collar_num, self.spec.collar_den) / 100
            if not collar_reference * (1 - pct) <= price <= collar_reference * (1 + pct):
                return False
        if self.spec.band_num is None or reference is None:
            return True
        pct = Fraction(self.spec.band_num, self.spec.band_den) / 100
        if side is Side.BUY:
            return price <= reference * (1 + pct)
        return price >= reference * (1 - pct)

    def tradeable(self, taker_side: Side, is_market: bool, limit: int, maker_price: int) -> bool:
        """Whether a taker may trade at ``maker_price`` (its limit, or for a market order the band
        around the last trade price as it was when the command arrived)."""
        if is_market:
            # The band of rule 8, and the collar's edge on the taker's own side (a market buy
            # never pays above the collar, a sell never receives below it).
            if self.spec.collar_num is not None and self.collar_at_arrival is not None:
                pct = Fraction(self.spec.collar_num, self.spec.collar_den) / 100
                if (maker_price > self.collar_at_arrival * (1 + pct) if taker_side is Side.BUY
                        else maker_price < self.collar_at_arrival * (1 - pct)):
                    return False
            return self.band_allows(taker_side, maker_price, self.band_reference)
        return maker_price <= limit if taker_side is Side.BUY else maker_price >= limit

    def opposite(self, side: Side) -> Side:
        return Side.SELL if side is Side.BUY else Side.BUY

    def would_cross(self, side: Side, is_market: bool, limit: int) -> bool:
        return any(self.tradeable(side, is_market, limit, o.price) for o in self.book if o.side is not side)

    def check_amount(self, qty: int, price: int | None) -> RejectCode | None:
        if qty <= 0:
            return RejectCode.INVALID_QTY
        if price is not None:
            if price <= 0:
                return RejectCode.INVALID_PRICE
            if price % self.spec.tick != 0:
                return RejectCode.INVALID_TICK
        if qty % self.spec.lot != 0:
            return RejectCode.INVALID_LOT
        if qty < self.spec.min_qty:
            return RejectCode.BELOW_MIN_QTY
        if self.spec.max_qty is not None and qty > self.spec.max_qty:
            return RejectCode.ABOVE_MAX_QTY
        if price is not None and self.spec.max_notional is not None and price * qty > self.spec.max_notional:
            return RejectCode.ABOVE_MAX_NOTIONAL
        return None

    # --------------------------------------------------------------- matching

    def match(self, taker: RefOrder, is_market: bool) -> str:
        """Trade ``taker`` against the book: "open", "filled", "decremented" (to zero) or "expired"."""
        status = "open"
        while taker.open > 0:
            candidates = [
                o
                for o in self.side_orders(self.opposite(taker.side))
                if self.tradeable(taker.side, is_market, taker.price, o.price)
            ]
            if not candidates:
                break
            maker = candidates[0]
            if maker.account == taker.account and taker.stp is not STPMode.NONE:
                mode = taker.stp
                if mode in (STPMode.EXPIRE_MAKER, STPMode.EXPIRE_BOTH):
                    self.book.remove(maker)
                    self.emit(
                        OrderExpired,
                        order_id=maker.order_id,
                        account=maker.account,
                        qty=maker.open,
                        remaining=0,
                        reason=ExpireReason.STP_MAKER,
                    )
                if mode in (STPMode.EXPIRE_TAKER, STPMode.EXPIRE_BOTH):
                    self.emit(
                        OrderExpired,
                        order_id=taker.order_id,
                        account=taker.account,
                        qty=taker.open,
                        remaining=0,
                        reason=ExpireReason.STP_TAKER,
                    )
                    taker.open = 0
                    return "expired"
                if mode is STPMode.DECREMENT:
                    cut = min(maker.open, taker.open)
                    maker.open -= cut
                    taker.open -= cut
                    self.emit(
                        OrderExpired,
                        order_id=maker.order_id,
                        account=maker.account,
                        qty=cut,
                        remaining=maker.open,
                        reason=ExpireReason.STP_DECREMENT,
                    )
                    self.emit(
                        OrderExpired,
                        order_id=taker.order_id,
                        account=taker.account,
                        qty=cut,
                        remaining=taker.open,
                        reason=ExpireReason.STP_DECREMENT,
                    )
                    if maker.open == 0:
                        self.book.remove(maker)
                    if taker.open == 0:
                        return "decremented"
                continue
            qty = min(maker.open, taker.open)
            self.trade_id += 1
            self.emit(
                Trade,
                trade_id=self.trade_id,
                price=maker.price,
                qty=qty,
                maker_order_id=maker.order_id,
                maker_account=maker.account,
                taker_order_id=taker.order_id,
                taker_account=taker.account,
                taker_side=taker.side,
            )
            self.last_price = maker.price
            maker.open -= qty
            taker.open -= qty
            if maker.open == 0:
                self.book.remove(maker)
                self.emit(OrderFilled, order_id=maker.order_id, account=maker.account)
            if taker.open == 0:
                self.emit(OrderFilled, order_id=taker.order_id, account=taker.account)
                status = "filled"
        return status

    def fok_completes(self, taker: RefOrder) -> bool:
        trial = copy.deepcopy(self)
        trial.out = []
        return trial.match(copy.deepcopy(taker), is_market=False) in ("filled", "decremented")

    # --------------------------------------------------------------- commands

    def apply(self, cmd: Command) -> list[Event]:
        self.out = []
        self.band_reference = self.last_price
        self.ts = max(cmd.ts, self.last_ts)
        self.last_ts = self.ts
        if self.spec.collar_num is not None and self.ts // self.spec.collar_interval_ms != self.collar_window:
            # A new collar interval: the reference moves to the last trade price.
            self.collar_window = self.ts // self.spec.collar_interval_ms
            if self.last_price is not None:
                self.collar_reference = self.last_price
        self.collar_at_arrival = self.collar_reference
        if isinstance(cmd, Place):
            self.place(cmd)
        elif isinstance(cmd, Cancel):
            self.cancel(cmd)
        elif isinstance(cmd, Amend):
            self.amend(cmd)
        elif isinstance(cmd, CancelAll):
            self.cancel_all(cmd)
        elif isinstance(cmd, SetState):
            self.state = cmd.state
            self.emit(MarketStateChanged, state=cmd.state)
        if self.spec.collar_num is not None and self.collar_reference is None and self.last_price is not None:
            self.collar_reference = self.last_price  # the market's first trade sets the reference
        return self.out

    def place(self, c: Place) -> None:
        is_market = c.order_type is OrderType.MARKET
        if c.order_id in self.used:
            return self.reject(c.order_id, c.account, RejectCode.DUPLICATE_ORDER_ID)
        if self.state is MarketState.HALTED:
            return self.reject(c.order_id, c.account, RejectCode.MARKET_HALTED)
        if self.state is MarketState.POST_ONLY and (is_market or not c.post_only):
            return self.reject(c.order_id, c.account, RejectCode.POST_ONLY_MODE)
        problem = self.check_amount(c.qty, None if is_market else c.price)
        if problem is not None:
            return self.reject(c.order_id, c.account, problem)
        if not is_market and not self.band_allows(c.side, c.price, self.last_price, self.collar_reference):
            return self.reject(c.order_id, c.account, RejectCode.PRICE_BAND)
        price = 0 if is_market else c.price
        if c.post_only and self.would_cross(c.side, is_market, price):
            return self.reject(c.order_id, c.account, RejectCode.POST_ONLY_WOULD_CROSS)
        tif = TimeInForce.IOC if is_market else c.tif
        taker = RefOrder(c.order_id, c.account, c.side, price, c.qty, c.post_only, c.stp, 0)
        if tif is TimeInForce.FOK and not self.fok_completes(taker):
            return self.reject(c.order_id, c.account, RejectCode.FOK_UNFILLED)
        self.used.add(c.order_id)
        taker.time = self.emit(
            OrderAccepted,
            order_id=c.order_id,
            account=c.account,
            side=c.side,
            order_type=c.order_type,
            price=price,
            qty=c.qty,
            tif=tif,
            post_only=c.post_only,
            stp=c.stp,
        )
        self.match(taker, is_market)
        if taker.open > 0:
            if tif is TimeInForce.GTC:
                self.book.append(taker)
            else:
                reason = ExpireReason.MARKET_REMAINDER if is_market else ExpireReason.IOC_REMAINDER
                self.emit(
                    OrderExpired,
                    order_id=taker.order_id,
                    account=taker.account,
                    qty=taker.open,
                    remaining=0,
                    reason=reason,
                )
        return None

    def find(self, order_id: str, account: str) -> RefOrder | None:
        for o in self.book:
            if o.order_id == order_id and o.account == account:
                return o
        return None

    def cancel(self, c: Cancel) -> None:
        order = self.find(c.order_id, c.account)
        if order is None:
            return self.reject(c.order_id, c.account, RejectCode.UNKNOWN_ORDER)
        self.book.remove(order)
        self.emit(
            OrderCancelled,
            order_id=order.order_id,
            account=order.account,
            qty=order.open,
            reason=CancelReason.USER,
        )
        return None

    def cancel_all(self, c: CancelAll) -> None:
        mine = sorted((o for o in self.book if o.account == c.account), key=lambda o: o.time)
        for order in mine:
            self.book.remove(order)
            self.emit(
                OrderCancelled,
                order_id=order.order_id,
                account=order.account,
                qty=order.open,
                reason=CancelReason.CANCEL_ALL,
            )
        self.emit(CancelAllDone, account=c.account, count=len(mine))

    def amend(self, c: Amend) -> None:
        order = self.find(c.order_id, c.account)
        if order is None:
            return self.reject(c.order_id, c.account, RejectCode.UNKNOWN_ORDER)
        if self.state is MarketState.HALTED:
            return self.reject(c.order_id, c.account, RejectCode.MARKET_HALTED)
        new_price = order.price if c.price is None else c.price
        new_qty = order.open if c.qty is None else c.qty
        keeps_priority = new_price == order.price and new_qty <= order.open
        if not keeps_priority and self.state is MarketState.POST_ONLY and not order.post_only:
            return self.reject(c.order_id, c.account, RejectCode.POST_ONLY_MODE)
        problem = self.check_amount(new_qty, new_price)
        if problem is not None:
            return self.reject(c.order_id, c.account, problem)
        if keeps_priority:
            order.open = new_qty
            self.emit(
                OrderAmended,
                order_id=order.order_id,
                account=order.account,
                price=new_price,
                qty=new_qty,
                requeued=False,
            )
            return None
        if not self.band_allows(order.side, new_price, self.last_price, self.collar_reference):
            return self.reject(c.order_id, c.account, RejectCode.PRICE_BAND)
        if order.post_only and self.would_cross(order.side, False, new_price):
            return self.reject(c.order_id, c.account, RejectCode.POST_ONLY_WOULD_CROSS)
        self.book.remove(order)
        taker = RefOrder(
            order.order_id, order.account, order.side, new_price, new_qty, order.post_only, order.stp, 0
        )
        taker.time = self.emit(
            OrderAmended,
            order_id=order.order_id,
            account=order.account,
            price=new_price,
            qty=new_qty,
            requeued=True,
        )
        self.match(taker, is_market=False)
        if taker.open > 0:
            self.book.append(taker)
        return None

    # ------------------------------------------------------------------ reads

    def book_orders(self, side: Side) -> list[tuple[int, list[tuple[str, int]]]]:
        levels: dict[int, list[tuple[str, int]]] = {}
        for o in self.side_orders(side):
            levels.setdefault(o.price, []).append((o.order_id, o.open))
        return list(levels.items())
