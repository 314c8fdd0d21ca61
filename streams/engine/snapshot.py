"""Canonical encoding of an engine's whole state, and its hash.

Format (``format`` 1): canonical JSON — keys sorted, no whitespace, ASCII only, integers only (no
floats) — of::

    {"format": 1,
     "spec": {"market", "tick", "lot", "min_qty", "band_num", "band_den"},
     "seq", "trade_id", "last_ts", "last_trade_price" (0 = never traded), "state" (wire name),
     "used_order_ids": [every order id ever accepted, sorted],
     "bids": [[price, [order, ...]], ...]   best (highest) first,
     "asks": [[price, [order, ...]], ...]   best (lowest) first}

and, only for a market whose spec sets them (so that the snapshots and hashes of every other
market are those of before they existed): ``max_qty``, ``max_notional``, ``collar_num``,
``collar_den`` and ``collar_interval_ms`` in ``spec``, and ``"collar": [reference price, interval]``.

with each order ``{"id", "account", "open", "post_only" (0/1), "stp" (wire name), "entry"}`` in
queue priority (removed orders still in a queue are left out).

Invariants:
- The encoding depends only on the state, never on dict/set insertion order, the process or the
  platform; so ``digest`` (hex sha256 of the bytes) is a canonical state hash.
- ``decode(encode(s))`` rebuilds an equal state; an engine restored from a snapshot and then fed
  the same commands emits the same events and reaches the same hash as one that never stopped.
- The transient set of levels touched since the last ``take_book_changes`` is not state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streams.domain.commands import MarketState, Side, STPMode
from streams.domain.market import MarketSpec
from streams.engine.book import BookSide, Order
from streams.engine.errors import SnapshotError

FORMAT = 1


@dataclass(slots=True)
class State:
    """Everything an engine needs to continue exactly where it was."""

    spec: MarketSpec
    seq: int
    trade_id: int
    last_ts: int
    state: MarketState
    last_price: int
    used: Iterable[str]
    bids: BookSide
    asks: BookSide
    collar: tuple[int, int] | None = None  # (reference price, interval) of a collared market


def _spec_dict(spec: MarketSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "market": spec.market,
        "tick": spec.tick,
        "lot": spec.lot,
        "min_qty": spec.min_qty,
        "band_num": spec.band_num,
        "band_den": spec.band_den,
    }
    if spec.max_qty is not None:
        doc["max_qty"] = spec.max_qty
    if spec.max_notional is not None:
        doc["max_notional"] = spec.max_notional
    if spec.collar_num is not None:
        doc.update(collar_num=spec.collar_num, collar_den=spec.collar_den, collar_interval_ms=spec.collar_interval_ms)
    return doc


def _side_list(book: BookSide) -> list[Any]:
    return [
        [
            price,
            [
                {
                    "id": o.order_id,
                    "account": o.account,
                    "open": o.open,
                    "post_only": int(o.post_only),
                    "stp": o.stp.wire,
                    "entry": o.entry,
                }
                for o in book.levels[price].live()
            ],
        ]
        for price in book.prices()
    ]


def encode(state: State) -> bytes:
    """The canonical bytes of ``state``."""
    doc = {
        "format": FORMAT,
        "spec": _spec_dict(state.spec),
        "seq": state.seq,
        "trade_id": state.trade_id,
        "last_ts": state.last_ts,
        "last_trade_price": state.last_price,
        "state": state.state.wire,
        "used_order_ids": sorted(state.used),
        "bids": _side_list(state.bids),
        "asks": _side_list(state.asks),
    }
    if state.collar is not None:
        doc["collar"] = list(state.collar)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def digest(data: bytes) -> str:
    """Hex sha256 of canonical state bytes."""
    return hashlib.sha256(data).hexdigest()


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SnapshotError(f"snapshot: {what} must be an integer, got {value!r}")
    return value


def _load_side(side: Side, raw: Any) -> BookSide:
    book = BookSide(side)
    for price_raw, orders in raw:
        price = _int(price_raw, "price")
        for o in orders:
            book.rest(
                Order(
                    order_id=str(o["id"]),
                    account=str(o["account"]),
                    side=side,
                    price=price,
                    open_qty=_int(o["open"], "open"),
                    post_only=bool(_int(o["post_only"], "post_only")),
                    stp=STPMode.from_wire(o["stp"]),
                    entry=_int(o["entry"], "entry"),
                )
            )
    return book


def decode(spec: MarketSpec, data: bytes) -> State:
    """Parse snapshot bytes taken of a market with ``spec``; ``SnapshotError`` if unusable."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"snapshot is not canonical JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotError(
            f"snapshot format {doc.get('format') if isinstance(doc, dict) else None!r} is not {FORMAT}"
        )
    if doc.get("spec") != _spec_dict(spec):
        raise SnapshotError(f"snapshot is of market spec {doc.get('spec')!r}, not {_spec_dict(spec)!r}")
    try:
        state = State(
            spec=spec,
            seq=_int(doc["seq"], "seq"),
            trade_id=_int(doc["trade_id"], "trade_id"),
            last_ts=_int(doc["last_ts"], "last_ts"),
            state=MarketState.from_wire(doc["state"]),
            last_price=_int(doc["last_trade_price"], "last_trade_price"),
            used=[str(x) for x in doc["used_order_ids"]],
            bids=_load_side(Side.BUY, doc["bids"]),
            asks=_load_side(Side.SELL, doc["asks"]),
        )
        if spec.collar_num is not None:
            reference, window = doc["collar"]
            state.collar = (_int(reference, "collar reference"), _int(window, "collar interval"))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"snapshot is malformed: {exc!r}") from None
    return state
