"""Commands: what a client asks one market's matching engine to do.

Invariants:
- Every command is an immutable value (frozen, slots) carrying a ``command_id`` and a ``ts`` in
  integer milliseconds. Time enters the engine only through ``ts``.
- Prices are integer *price units* and quantities integer *quantity units* of the market (see
  :mod:`streams.domain.market`); no floats. A market order carries ``price == 0``.
- Every enum has a stable integer value (never renumbered: values are persisted and sent on the
  wire) and a stable wire name (``.wire``, as written in the conformance scenarios; ``from_wire``
  accepts any letter case).
- ``command_to_dict`` / ``command_from_dict`` are pure and JSON-able: ints, bools, strings and wire
  names only. They are exact inverses.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Self, TypeAlias


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

#: Wire name of each command type (the ``cmd`` field of the JSON form).
COMMAND_NAMES: dict[type[Any], str] = {
    Place: "place",
    Cancel: "cancel",
    Amend: "amend",
    CancelAll: "cancel_all",
    SetState: "set_state",
}


def command_to_dict(cmd: Command) -> dict[str, Any]:
    """A JSON-able dict (integer units, wire names) of ``cmd``; inverse of ``command_from_dict``."""
    out: dict[str, Any] = {"cmd": COMMAND_NAMES[type(cmd)], "command_id": cmd.command_id, "ts": cmd.ts}
    if isinstance(cmd, Place):
        out.update(
            order_id=cmd.order_id,
            account=cmd.account,
            side=cmd.side.wire,
            type=cmd.order_type.wire,
            price=cmd.price,
            qty=cmd.qty,
            tif=cmd.tif.wire,
            post_only=cmd.post_only,
            stp=cmd.stp.wire,
        )
    elif isinstance(cmd, Cancel):
        out.update(order_id=cmd.order_id, account=cmd.account)
    elif isinstance(cmd, Amend):
        out.update(order_id=cmd.order_id, account=cmd.account, qty=cmd.qty, price=cmd.price)
    elif isinstance(cmd, CancelAll):
        out.update(account=cmd.account)
    else:
        out.update(state=cmd.state.wire)
    return out


def _int(d: dict[str, Any], key: str) -> int:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


def _opt_int(d: dict[str, Any], key: str) -> int | None:
    return None if d.get(key) is None else _int(d, key)


def _str(d: dict[str, Any], key: str) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def command_from_dict(d: dict[str, Any]) -> Command:
    """Parse the dict form (integer units). ``ValueError``/``KeyError`` on a malformed command."""
    kind = d.get("cmd")
    cid = _str(d, "command_id")
    ts = _int(d, "ts")
    if kind == "place":
        order_type = OrderType.from_wire(_str(d, "type"))
        return Place(
            command_id=cid,
            ts=ts,
            order_id=_str(d, "order_id"),
            account=_str(d, "account"),
            side=Side.from_wire(_str(d, "side")),
            order_type=order_type,
            price=_opt_int(d, "price") or 0,
            qty=_int(d, "qty"),
            tif=TimeInForce.from_wire(d.get("tif") or "GTC"),
            post_only=bool(d.get("post_only", False)),
            stp=STPMode.from_wire(d.get("stp") or "expire_maker"),
        )
    if kind == "cancel":
        return Cancel(cid, ts, _str(d, "order_id"), _str(d, "account"))
    if kind == "amend":
        return Amend(
            cid, ts, _str(d, "order_id"), _str(d, "account"), _opt_int(d, "qty"), _opt_int(d, "price")
        )
    if kind == "cancel_all":
        return CancelAll(cid, ts, _str(d, "account"))
    if kind == "set_state":
        return SetState(cid, ts, MarketState.from_wire(_str(d, "state")))
    raise ValueError(f"unknown command type {kind!r}")
