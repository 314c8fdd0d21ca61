"""Events: what one market's matching engine reports back, in order.

Invariants:
- Every event is immutable (frozen, slots) and carries ``seq`` — one gap-free per-market counter
  over *all* events, starting at 1 — and ``ts``, the (clamped, never decreasing) time of the
  command that caused it. Trades additionally carry a gap-free per-market ``trade_id`` from 1.
- Every command yields exactly one *outcome* event (see ``is_outcome``): Place → OrderAccepted or
  OrderRejected (accepted comes before the order's trades); Cancel → OrderCancelled(user) or
  OrderRejected; Amend → OrderAmended or OrderRejected; CancelAll → CancelAllDone (after its
  OrderCancelled(cancel_all) events); SetState → MarketStateChanged. Rejections are events.
- Integer codes of ``RejectCode``, ``CancelReason`` and ``ExpireReason`` are stable (persisted,
  sent on the wire): never renumber, only append. Their wire names are the lowercase names.
- ``event_to_dict`` / ``event_from_dict`` are pure, JSON-able (ints, bools, strings, wire names)
  and exact inverses.

Performance note: frozen dataclasses are slow to construct (``object.__setattr__`` per field), and
the engine builds several per command. ``builder(cls)`` returns a callable with the same positional
signature that fills an unfrozen twin with the same slot layout and then switches its class to
``cls``: the result is a genuine, frozen ``cls`` instance, about five times faster to make.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeAlias, TypeVar

from streams.domain.commands import MarketState, OrderType, Side, STPMode, TimeInForce, WireEnum


class RejectCode(WireEnum):
    """Why a command was rejected. Stable codes: never renumber, only append."""

    DUPLICATE_ORDER_ID = 1
    MARKET_HALTED = 2
    POST_ONLY_MODE = 3
    INVALID_QTY = 4
    INVALID_PRICE = 5
    INVALID_TICK = 6
    INVALID_LOT = 7
    BELOW_MIN_QTY = 8
    PRICE_BAND = 9
    POST_ONLY_WOULD_CROSS = 10
    FOK_UNFILLED = 11
    UNKNOWN_ORDER = 12
    ABOVE_MAX_QTY = 13
    ABOVE_MAX_NOTIONAL = 14


class CancelReason(WireEnum):
    USER = 1
    CANCEL_ALL = 2


class ExpireReason(WireEnum):
    IOC_REMAINDER = 1
    MARKET_REMAINDER = 2
    STP_MAKER = 3
    STP_TAKER = 4
    STP_DECREMENT = 5


@dataclass(frozen=True, slots=True)
class OrderAccepted:
    """Outcome of a Place that passed validation (market orders: price 0, tif IOC)."""

    seq: int
    ts: int
    order_id: str
    account: str
    side: Side
    order_type: OrderType
    price: int
    qty: int
    tif: TimeInForce
    post_only: bool
    stp: STPMode


@dataclass(frozen=True, slots=True)
class OrderRejected:
    """Outcome of a Place, Cancel or Amend that was refused; nothing else changed."""

    seq: int
    ts: int
    order_id: str
    account: str
    reason: RejectCode


@dataclass(frozen=True, slots=True)
class OrderAmended:
    """Outcome of an Amend: ``qty`` is the new open quantity; ``requeued`` if it lost priority."""

    seq: int
    ts: int
    order_id: str
    account: str
    price: int
    qty: int
    requeued: bool


@dataclass(frozen=True, slots=True)
class Trade:
    """A fill at the maker's price."""

    seq: int
    ts: int
    trade_id: int
    price: int
    qty: int
    maker_order_id: str
    maker_account: str
    taker_order_id: str
    taker_account: str
    taker_side: Side


@dataclass(frozen=True, slots=True)
class OrderFilled:
    """The order's open quantity reached zero through trades."""

    seq: int
    ts: int
    order_id: str
    account: str


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    """A resting order was removed on request; ``qty`` is the open quantity removed."""

    seq: int
    ts: int
    order_id: str
    account: str
    qty: int
    reason: CancelReason


@dataclass(frozen=True, slots=True)
class OrderExpired:
    """Quantity removed by the engine: ``qty`` removed, ``remaining`` open after (> 0 only for a
    partial ``stp_decrement``)."""

    seq: int
    ts: int
    order_id: str
    account: str
    qty: int
    remaining: int
    reason: ExpireReason


@dataclass(frozen=True, slots=True)
class CancelAllDone:
    """Outcome of a CancelAll: ``count`` orders were cancelled (possibly 0)."""

    seq: int
    ts: int
    account: str
    count: int


@dataclass(frozen=True, slots=True)
class MarketStateChanged:
    """Outcome of a SetState (emitted even if the state did not change)."""

    seq: int
    ts: int
    state: MarketState


Event: TypeAlias = (
    OrderAccepted
    | OrderRejected
    | OrderAmended
    | Trade
    | OrderFilled
    | OrderCancelled
    | OrderExpired
    | CancelAllDone
    | MarketStateChanged
)

EVENT_TYPES: dict[str, type[Any]] = {
    "order_accepted": OrderAccepted,
    "order_rejected": OrderRejected,
    "order_amended": OrderAmended,
    "trade": Trade,
    "order_filled": OrderFilled,
    "order_cancelled": OrderCancelled,
    "order_expired": OrderExpired,
    "cancel_all_done": CancelAllDone,
    "market_state_changed": MarketStateChanged,
}
EVENT_NAMES: dict[type[Any], str] = {cls: name for name, cls in EVENT_TYPES.items()}

_OUTCOMES = (OrderAccepted, OrderRejected, OrderAmended, CancelAllDone, MarketStateChanged)
#: Names of the event types that can be a command's outcome (``OrderCancelled`` only with reason
#: ``user``, see ``is_outcome``): for readers that look at an encoded event's type name first.
OUTCOME_NAMES = tuple(cls.__name__ for cls in (*_OUTCOMES, OrderCancelled))


def is_outcome(event: Event) -> bool:
    """True for the one event per command that reports the command's outcome.

    OrderCancelled is an outcome only with reason ``user`` (reason ``cancel_all`` is a side effect
    of a CancelAll, whose outcome is CancelAllDone).
    """
    if isinstance(event, OrderCancelled):
        return event.reason is CancelReason.USER
    return isinstance(event, _OUTCOMES)


_ENUM_FIELDS: dict[str, Any] = {
    "side": Side,
    "taker_side": Side,
    "order_type": OrderType,
    "tif": TimeInForce,
    "stp": STPMode,
    "state": MarketState,
}
_REASONS: dict[type[Any], Any] = {
    OrderRejected: RejectCode,
    OrderCancelled: CancelReason,
    OrderExpired: ExpireReason,
}


def event_to_dict(event: Event) -> dict[str, Any]:
    """``{"type": <name>, "seq": .., "ts": .., <fields>}`` with enums as wire names."""
    out: dict[str, Any] = {"type": EVENT_NAMES[type(event)]}
    for f in fields(event):
        value = getattr(event, f.name)
        out[f.name] = value.wire if isinstance(value, WireEnum) else value
    return out


def event_from_dict(d: dict[str, Any]) -> Event:
    """Inverse of ``event_to_dict``; ``ValueError`` on an unknown type or field."""
    try:
        cls = EVENT_TYPES[d["type"]]
    except KeyError:
        raise ValueError(f"unknown event type {d.get('type')!r}") from None
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        value = d[f.name]
        if f.name == "reason":
            value = _REASONS[cls].from_wire(value)
        elif f.name in _ENUM_FIELDS:
            value = _ENUM_FIELDS[f.name].from_wire(value)
        kwargs[f.name] = value
    event: Event = cls(**kwargs)
    return event


_T = TypeVar("_T")


def builder(cls: type[_T]) -> type[_T]:
    """A fast constructor for the frozen slots dataclass ``cls`` (positional arguments only).

    Returns an unfrozen class with the same slots whose ``__init__`` assigns the fields and then
    sets ``__class__`` to ``cls``; calling it yields a real, frozen ``cls`` instance equal to
    ``cls(*args)``. Used by the engine's hot path.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if tuple(names) != getattr(cls, "__slots__", None):
        raise TypeError(f"{cls.__name__} must be a slots dataclass")
    body = "".join(f"    self.{n} = {n}\n" for n in names)
    src = f"def __init__(self, {', '.join(names)}):\n{body}    self.__class__ = _target\n"
    namespace: dict[str, Any] = {"_target": cls}
    exec(src, namespace)
    twin = type(f"_{cls.__name__}Builder", (), {"__slots__": tuple(names), "__init__": namespace["__init__"]})
    return twin
