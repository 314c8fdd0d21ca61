"""Protocol messages (``docs/websocket-protocol.md``): request parsing and server message building.

Pure functions. Every server message is a dict with a ``type`` and only integers, strings,
booleans, null and lists/dicts of those (never floats); :func:`encode` turns one into the bytes
of one text frame (orjson). A request that cannot be used becomes a :class:`RequestError` with
a protocol error code, never an exception escaping to the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import orjson

PUBLIC_CHANNELS: Final = frozenset({"book", "trades", "candles", "ticker", "status"})
PRIVATE_CHANNELS: Final = frozenset({"orders", "fills"})
CHANNELS: Final = PUBLIC_CHANNELS | PRIVATE_CHANNELS
DEPTHS: Final = (10, 25, 100, 500, 1000)
INTERVALS: Final = ("1m", "1h", "1d")
OPS: Final = ("subscribe", "unsubscribe", "auth")

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class SubscriptionKey:
    """What identifies a subscription on a connection; ``market`` None for private channels,
    ``interval`` set for candles only."""

    channel: str
    market: str | None
    interval: str | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: int | None
    key: SubscriptionKey
    depth: int | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: int | None
    key: SubscriptionKey


@dataclass(frozen=True, slots=True)
class Auth:
    id: int | None
    token: str


Request = Subscribe | Unsubscribe | Auth


@dataclass(frozen=True, slots=True)
class RequestError:
    id: int | None
    code: str
    message: str


def encode(message: Message) -> bytes:
    return orjson.dumps(message)


def _request_id(raw: dict[str, Any]) -> int | RequestError | None:
    value = raw.get("id")
    if value is None:
        return None
    if type(value) is not int:
        return RequestError(None, "invalid_request", "id must be an integer")
    return value


def parse_request(frame: str | bytes, markets: frozenset[str]) -> Request | RequestError:
    """One client frame → a request or the error to answer (``markets``: the known symbols)."""
    try:
        raw = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return RequestError(None, "malformed_json", "the frame is not valid JSON")
    if not isinstance(raw, dict):
        return RequestError(None, "malformed_json", "the frame must be a JSON object")
    rid = _request_id(raw)
    if isinstance(rid, RequestError):
        return rid
    op = raw.get("op")
    if not isinstance(op, str):
        return RequestError(rid, "invalid_request", "op is missing or not a string")
    if op not in OPS:
        return RequestError(rid, "unknown_op", f"unknown op {op[:40]!r}")
    if op == "auth":
        token = raw.get("token")
        if not isinstance(token, str) or not token:
            return RequestError(rid, "invalid_request", "auth needs a token string")
        return Auth(rid, token)
    channel = raw.get("channel")
    if not isinstance(channel, str):
        return RequestError(rid, "invalid_request", "channel is missing or not a string")
    if channel not in CHANNELS:
        return RequestError(rid, "unknown_channel", f"unknown channel {channel[:40]!r}")
    market = raw.get("market")
    if channel in PRIVATE_CHANNELS:
        if market is not None:
            return RequestError(rid, "invalid_request", f"channel {channel} takes no market")
    else:
        if not isinstance(market, str):
            return RequestError(rid, "invalid_request", f"channel {channel} needs a market")
        if market not in markets:
            return RequestError(rid, "unknown_market", f"unknown market {market[:40]!r}")
    interval = raw.get("interval")
    if channel == "candles":
        if interval not in INTERVALS:
            return RequestError(rid, "invalid_interval", "interval must be one of 1m, 1h, 1d")
    elif interval is not None:
        return RequestError(rid, "invalid_request", "interval is for candles only")
    key = SubscriptionKey(channel, market, interval)
    if op == "unsubscribe":
        return Unsubscribe(rid, key)
    depth = raw.get("depth")
    if depth is not None:
        if channel != "book":
            return RequestError(rid, "invalid_request", "depth is for book only")
        if type(depth) is not int or depth not in DEPTHS:
            return RequestError(rid, "invalid_depth", "depth must be one of 10, 25, 100, 500, 1000")
    return Subscribe(rid, key, depth)


# -- server messages ---------------------------------------------------------------------------

def error(rid: int | None, code: str, message: str) -> Message:
    return {"type": "error", "id": rid, "code": code, "message": message}


def subscribed(kind: str, rid: int | None, key: SubscriptionKey, depth: int | None = None) -> Message:
    """``kind``: "subscribed" or "unsubscribed"; echoes the request's fields."""
    out: Message = {"type": kind, "id": rid, "channel": key.channel, "market": key.market}
    if key.channel == "book" and kind == "subscribed":
        out["depth"] = depth
    if key.interval is not None:
        out["interval"] = key.interval
    return out


def not_ready(rid: int | None, key: SubscriptionKey, retry_after_ms: int, why: str) -> Message:
    return {"type": "not_ready", "id": rid, "channel": key.channel, "market": key.market,
            "retry_after_ms": retry_after_ms, "message": why}


def authenticated(rid: int | None, account: str, expires: int) -> Message:
    return {"type": "authenticated", "id": rid, "account": account, "expires": expires}


def heartbeat(ts: int, book_seqs: dict[str, int]) -> Message:
    return {"type": "heartbeat", "ts": ts, "book_seq": book_seqs}


def book(market: str, snapshot: bool, book_seq: int, prev_book_seq: int, depth: int | None,
         bids: list[tuple[int, int]], asks: list[tuple[int, int]], checksum: int, ts: int) -> Message:
    return {"type": "book", "market": market, "snapshot": snapshot, "book_seq": book_seq,
            "prev_book_seq": prev_book_seq, "depth": depth, "bids": [list(level) for level in bids],
            "asks": [list(level) for level in asks], "checksum": checksum, "ts": ts}


def trade(record: dict[str, Any]) -> Message:
    """From a decoded ``trades`` record (``xchg.v1.Trade``)."""
    return {"type": "trade", "market": record["market"], "trade_id": record["trade_id"],
            "price": record["price"], "qty": record["qty"], "side": record["taker_side"],
            "seq": record["seq"], "ts": record["ts"]}


def candle(record: dict[str, Any]) -> Message:
    """From a decoded ``md.candles`` record (``xchg.v1.Candle``); quote_volume as digits."""
    quote: Decimal | int = record["quote_volume"]
    return {"type": "candle", "market": record["market"], "interval": record["interval"],
            "window_start": record["window_start"], "open": record["open"], "high": record["high"],
            "low": record["low"], "close": record["close"], "volume": record["volume"],
            "quote_volume": str(int(quote)), "trade_count": record["trade_count"],
            "first_trade_id": record["first_trade_id"], "last_trade_id": record["last_trade_id"],
            "final": record["final"]}


def status(market: str, state: str, seq: int | None, ts: int | None) -> Message:
    return {"type": "status", "market": market, "state": state, "seq": seq, "ts": ts}


_ORDER_EVENTS: Final = {
    "xchg.v1.OrderAccepted": "accepted", "xchg.v1.OrderRejected": "rejected",
    "xchg.v1.OrderAmended": "amended", "xchg.v1.OrderFilled": "filled",
    "xchg.v1.OrderCancelled": "cancelled", "xchg.v1.OrderExpired": "expired",
    "xchg.v1.CancelAllDone": "cancel_all_done",
}


def private_messages(record: dict[str, Any]) -> list[tuple[str, str, Message]]:
    """The private messages one decoded ``orders.events`` record yields, as
    (account, channel, message): an ``order`` for an order event of an account, a ``fill`` per
    account side of a trade (two when an account traded with itself)."""
    name, body = record["body"]
    market, seq, ts = record["market"], record["seq"], record["ts"]
    if name == "xchg.v1.TradeExecuted":
        maker_side = "sell" if body["taker_side"] == "buy" else "buy"
        out = []
        for role, account, order_id, side in (("maker", body["maker_account"], body["maker_order_id"], maker_side),
                                              ("taker", body["taker_account"], body["taker_order_id"],
                                               body["taker_side"])):
            out.append((account, "fills", {
                "type": "fill", "account": account, "market": market, "trade_id": body["trade_id"],
                "order_id": order_id, "role": role, "side": side, "price": body["price"], "qty": body["qty"],
                "seq": seq, "ts": ts}))
        return out
    kind = _ORDER_EVENTS.get(name)
    account = body.get("account") if isinstance(body, dict) else None
    if kind is None or not isinstance(account, str):
        return []
    clean = {k: (str(v) if isinstance(v, Decimal) else v) for k, v in body.items()}
    return [(account, "orders", {"type": "order", "account": account, "market": market, "event": kind,
                                 "order_id": body.get("order_id"), "seq": seq, "ts": ts, "body": clean})]
