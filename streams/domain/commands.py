"""Commands: what a client asks one market's matching engine to do.

Invariants:
- Every command is an immutable value (frozen, slots) carrying a ``command_id`` and a ``ts`` in
  integer milliseconds. Time enters the engine only through ``ts``.
- Prices are integer *price units* and quantities integer *quantity units* of the market (see
  :mod:`streams.domain.market`); no floats. A market order carries ``price == 0``.
- Every enum has a stable integer value (never renumbered: values are persisted and sent on the
  wire) and a stable wire name (``.wire``, as written in the conformance scenarios; ``from_wire``
  accepts any letter case).
- Commands reach the engine from Avro records (``streams.runtime.records``) and from scenario
  and replay files (``streams.offline.scenario``), each translated in that one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Self, TypeAlias


class WireEnum(IntEnum):
    """An ``IntEnum`` with a stable lowercase wire name."""

    @property
    def wire(self) -> str:
        return self.name.lower()

    @classmethod
    def from_wire(cls, name: str) -> Self:
        """The member whose wire name is ``name`` (any case); ``ValueError`` if there is none."""
        try:
            return cls[name.upper()]
        except KeyError:
            allowed = ", ".join(m.wire for m in cls)
            raise ValueError(f"unknown {cls.__name__} {name!r} (expected one of: {allowed})") from None


class Side(WireEnum):
    BUY = 1
    SELL = 2


class OrderType(WireEnum):
    LIMIT = 1
    MARKET = 2


class TimeInForce(WireEnum):
    """Wire names are upper case (``GTC``, ``IOC``, ``FOK``), as in the scenarios."""

    GTC = 1
    IOC = 2
    FOK = 3

    @property
    def wire(self) -> str:
        return self.name


class STPMode(WireEnum):
    NONE = 0
    EXPIRE_MAKER = 1
    EXPIRE_TAKER = 2
    EXPIRE_BOTH = 3
    DECREMENT = 4


class MarketState(WireEnum):
    ACTIVE = 1
    HALTED = 2
    POST_ONLY = 3


@dataclass(frozen=True, slots=True)
class Place:
    """Place a new order. ``price`` is 0 for a market order (market orders are always IOC)."""

    command_id: str
    ts: int
    order_id: str
    account: str
    side: Side
    order_type: OrderType
    price: int
    qty: int
    tif: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    stp: STPMode = STPMode.EXPIRE_MAKER


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel one resting order of ``account``."""

    command_id: str
    ts: int
    order_id: str
    account: str


@dataclass(frozen=True, slots=True)
class Amend:
    """Change a resting order's open quantity (``qty``) and/or price; ``None`` keeps the value."""

    command_id: str
    ts: int
    order_id: str
    account: str
    qty: int | None = None
    price: int | None = None


@dataclass(frozen=True, slots=True)
class CancelAll:
    """Cancel every resting order of ``account`` in the market."""

    command_id: str
    ts: int
    account: str


@dataclass(frozen=True, slots=True)
class SetState:
    """Switch the market to ``state`` (active, halted, post_only)."""

    command_id: str
    ts: int
    state: MarketState


Command: TypeAlias = Place | Cancel | Amend | CancelAll | SetState
