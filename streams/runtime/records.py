"""Domain commands and events ↔ the Avro record dicts of the topics (``schemas/``).

The engine speaks domain objects (``streams.domain``); Kafka speaks the dicts that
``streams.serde.Codec`` encodes. This module is the one translation between them, written as
flat per-type functions because it sits on the hot path (one call per command and per event).

Enum values travel as their wire names, which are also the Avro enum symbols.
"""

from __future__ import annotations

from collections.abc import Callable
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

NS = "xchg.v1."
Record = dict[str, Any]


class RecordError(ValueError):
    """A decoded command record that cannot become a domain command (dead-letter it)."""

    reason = "invalid_command"


class IdentifierError(RecordError):
    """``command_id``, ``order_id`` or ``account`` breaks the contract (``IDENTIFIER_MAX_CHARS``,
    printable): dead-lettered with ``invalid_<field>``, never echoed into an output record."""

    def __init__(self, field: str, value: str) -> None:
        shown = value[:40] + ("..." if len(value) > 40 else "")
        super().__init__(f"{field} must be 1 to {IDENTIFIER_MAX_CHARS} printable characters, "
                         f"got {len(value)}: {shown!r}")
        self.reason = f"invalid_{field}"


# Identifiers are echoed in every event, trade and row they cause, and indexed in the database:
# bounded, they keep every output record small and every row inside its index's limit.
# "Printable" is str.isprintable(): no control, format or separator characters other than the
# ASCII space (so no NUL, which PostgreSQL text cannot hold); non-ASCII letters are allowed.
IDENTIFIER_MAX_CHARS = 64


def _identifier(field: str, value: str) -> str:
    if not 0 < len(value) <= IDENTIFIER_MAX_CHARS or not value.isprintable():
        raise IdentifierError(field, value)
    return value


_SIDE = {s.wire: s for s in Side}
_TYPE = {t.wire: t for t in OrderType}
_TIF = {t.wire: t for t in TimeInForce}
_STP = {s.wire: s for s in STPMode}
_STATE = {s.wire: s for s in MarketState}
# Wire names by member, one table per enum (IntEnum members of different enums with the same
# value are equal, so one shared table would mix them up); the ``wire`` property costs a call.
SIDE_W = {m: m.wire for m in Side}
TYPE_W = {m: m.wire for m in OrderType}
TIF_W = {m: m.wire for m in TimeInForce}
STP_W = {m: m.wire for m in STPMode}
STATE_W = {m: m.wire for m in MarketState}
REJECT_W = {m: m.wire for m in RejectCode}
CANCEL_W = {m: m.wire for m in CancelReason}
EXPIRE_W = {m: m.wire for m in ExpireReason}


# -- commands ---------------------------------------------------------------------------------------

def command_from_record(value: Record, ts: int) -> tuple[str, Command]:
    """``(market, command)`` from an ``orders.commands`` value; ``ts`` is the record's log time."""
    command_id = _identifier("command_id", value["command_id"])
    name, body = value["body"]
    if "order_id" in body:
        _identifier("order_id", body["order_id"])
    if "account" in body:
        _identifier("account", body["account"])
    if name == NS + "PlaceOrder":
        return value["market"], Place(
            command_id, ts, body["order_id"], body["account"], _SIDE[body["side"]],
            _TYPE[body["order_type"]], body["price"], body["qty"], _TIF[body["tif"]],
            body["post_only"], _STP[body["stp"]],
        )
    if name == NS + "CancelOrder":
        return value["market"], Cancel(command_id, ts, body["order_id"], body["account"])
    if name == NS + "AmendOrder":
        return value["market"], Amend(command_id, ts, body["order_id"], body["account"], body["qty"], body["price"])
    if name == NS + "CancelAll":
        return value["market"], CancelAll(command_id, ts, body["account"])
    if name == NS + "SetMarketState":
        return value["market"], SetState(command_id, ts, _STATE[body["state"]])
    raise RecordError(f"unknown command body {name}")


def command_to_record(market: str, cmd: Command) -> Record:
    """The ``orders.commands`` value of a command (its ``ts`` is not sent: the broker sets it)."""
    body: tuple[str, Record]
    if isinstance(cmd, Place):
        body = (NS + "PlaceOrder", {
            "order_id": cmd.order_id, "account": cmd.account, "side": SIDE_W[cmd.side],
            "order_type": TYPE_W[cmd.order_type], "price": cmd.price, "qty": cmd.qty, "tif": TIF_W[cmd.tif],
            "post_only": cmd.post_only, "stp": STP_W[cmd.stp],
        })
    elif isinstance(cmd, Cancel):
        body = (NS + "CancelOrder", {"order_id": cmd.order_id, "account": cmd.account})
    elif isinstance(cmd, Amend):
        body = (NS + "AmendOrder", {"order_id": cmd.order_id, "account": cmd.account,
                                    "qty": cmd.qty, "price": cmd.price})
    elif isinstance(cmd, CancelAll):
        body = (NS + "CancelAll", {"account": cmd.account})
    else:
        body = (NS + "SetMarketState", {"state": STATE_W[cmd.state]})
    return {"command_id": cmd.command_id, "market": market, "body": body}


# -- events -----------------------------------------------------------------------------------------

def _accepted(e: OrderAccepted) -> tuple[str, Record]:
    return NS + "OrderAccepted", {
        "order_id": e.order_id, "account": e.account, "side": SIDE_W[e.side], "order_type": TYPE_W[e.order_type],
        "price": e.price, "qty": e.qty, "tif": TIF_W[e.tif], "post_only": e.post_only, "stp": STP_W[e.stp],
    }


def _rejected(e: OrderRejected) -> tuple[str, Record]:
    return NS + "OrderRejected", {"order_id": e.order_id, "account": e.account, "reason": REJECT_W[e.reason]}


def _amended(e: OrderAmended) -> tuple[str, Record]:
    return NS + "OrderAmended", {"order_id": e.order_id, "account": e.account, "price": e.price,
                                 "qty": e.qty, "requeued": e.requeued}


def _trade(e: Trade) -> tuple[str, Record]:
    return NS + "TradeExecuted", {
        "trade_id": e.trade_id, "price": e.price, "qty": e.qty, "maker_order_id": e.maker_order_id,
        "maker_account": e.maker_account, "taker_order_id": e.taker_order_id,
        "taker_account": e.taker_account, "taker_side": SIDE_W[e.taker_side],
    }


def _filled(e: OrderFilled) -> tuple[str, Record]:
    return NS + "OrderFilled", {"order_id": e.order_id, "account": e.account}


def _cancelled(e: OrderCancelled) -> tuple[str, Record]:
    return NS + "OrderCancelled", {"order_id": e.order_id, "account": e.account, "qty": e.qty,
                                   "reason": CANCEL_W[e.reason]}


def _expired(e: OrderExpired) -> tuple[str, Record]:
    return NS + "OrderExpired", {"order_id": e.order_id, "account": e.account, "qty": e.qty,
                                 "remaining": e.remaining, "reason": EXPIRE_W[e.reason]}


def _cancel_all(e: CancelAllDone) -> tuple[str, Record]:
    return NS + "CancelAllDone", {"account": e.account, "count": e.count}


def _state(e: MarketStateChanged) -> tuple[str, Record]:
    return NS + "MarketStateChanged", {"state": STATE_W[e.state]}


_BODY: dict[type[Any], Callable[[Any], tuple[str, Record]]] = {
    OrderAccepted: _accepted, OrderRejected: _rejected, OrderAmended: _amended, Trade: _trade,
    OrderFilled: _filled, OrderCancelled: _cancelled, OrderExpired: _expired,
    CancelAllDone: _cancel_all, MarketStateChanged: _state,
}


def event_record(market: str, event: Event, command_id: str, partition: int, offset: int) -> Record:
    """The ``orders.events`` envelope of one engine event."""
    return {
        "market": market, "seq": event.seq, "ts": event.ts, "command_id": command_id,
        "input_partition": partition, "input_offset": offset, "body": _BODY[type(event)](event),
    }


def trade_record(market: str, trade: Trade, command_id: str, partition: int, offset: int) -> Record:
    """The ``trades`` value of one trade."""
    return {
        "market": market, "trade_id": trade.trade_id, "seq": trade.seq, "ts": trade.ts,
        "price": trade.price, "qty": trade.qty, "maker_order_id": trade.maker_order_id,
        "maker_account": trade.maker_account, "taker_order_id": trade.taker_order_id,
        "taker_account": trade.taker_account, "taker_side": SIDE_W[trade.taker_side],
        "command_id": command_id, "input_partition": partition, "input_offset": offset,
    }


def event_from_record(value: Record) -> Event:
    """The domain event inside an ``orders.events`` value (for checkers and sinks)."""
    name, b = value["body"]
    seq, ts = value["seq"], value["ts"]
    kind = name.removeprefix(NS)
    if kind == "OrderAccepted":
        return OrderAccepted(seq, ts, b["order_id"], b["account"], _SIDE[b["side"]], _TYPE[b["order_type"]],
                             b["price"], b["qty"], _TIF[b["tif"]], b["post_only"], _STP[b["stp"]])
    if kind == "OrderRejected":
        return OrderRejected(seq, ts, b["order_id"], b["account"], RejectCode.from_wire(b["reason"]))
    if kind == "OrderAmended":
        return OrderAmended(seq, ts, b["order_id"], b["account"], b["price"], b["qty"], b["requeued"])
    if kind == "TradeExecuted":
        return Trade(seq, ts, b["trade_id"], b["price"], b["qty"], b["maker_order_id"], b["maker_account"],
                     b["taker_order_id"], b["taker_account"], _SIDE[b["taker_side"]])
    if kind == "OrderFilled":
        return OrderFilled(seq, ts, b["order_id"], b["account"])
    if kind == "OrderCancelled":
        return OrderCancelled(seq, ts, b["order_id"], b["account"], b["qty"], CancelReason.from_wire(b["reason"]))
    if kind == "OrderExpired":
        return OrderExpired(seq, ts, b["order_id"], b["account"], b["qty"], b["remaining"],
                            ExpireReason.from_wire(b["reason"]))
    if kind == "CancelAllDone":
        return CancelAllDone(seq, ts, b["account"], b["count"])
    if kind == "MarketStateChanged":
        return MarketStateChanged(seq, ts, _STATE[b["state"]])
    raise RecordError(f"unknown event body {name}")
