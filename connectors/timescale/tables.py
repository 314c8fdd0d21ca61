"""The tables the sink writes, each described by ONE value: its name and its columns in order, every
column with the PostgreSQL type binary COPY sends it as; and the row of each table built from a
decoded record (no I/O).

Invariants:

- A row is a tuple in the order of its table's ``columns``; code that needs one value of a row asks
  the table for the column's position (``Table.position``), never a literal index.
- ``trades`` and ``order_events`` are *journals* (``Journal``): the rows of a gap-free per-market
  stream, stored with the digest of the record they came from (``record_digest``, the last column
  of ``Journal.written``); ``key`` names the per-market counter that, with ``market``, is the key.
- Times are written as aware UTC datetimes made exactly from epoch milliseconds
  (``utc_from_ms``); JSON columns through ``json_dumps`` (bytes as hex, the rest as text).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from streams.serde.codec import Codec
from streams.serde.topics import ORDERS_EVENTS, TRADES


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # the PostgreSQL type of the value, as binary COPY and ``%s::type`` send it


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(c.type for c in self.columns)

    def position(self, column: str) -> int:
        """Where ``column``'s value is in a row of this table (ValueError for an unknown column)."""
        return self.names.index(column)


def _table(name: str, *columns: tuple[str, str]) -> Table:
    return Table(name, tuple(Column(n, t) for n, t in columns))


TRADES_TABLE = _table(
    "trades", ("market", "text"), ("trade_id", "int8"), ("ts", "timestamptz"), ("seq", "int8"), ("price", "int8"),
    ("qty", "int8"), ("maker_order_id", "text"), ("maker_account", "text"), ("taker_order_id", "text"),
    ("taker_account", "text"), ("taker_side", "text"))
EVENTS_TABLE = _table(
    "order_events", ("market", "text"), ("seq", "int8"), ("ts", "timestamptz"), ("command_id", "text"),
    ("event_type", "text"), ("order_id", "text"), ("account", "text"), ("payload", "jsonb"))
CANDLES_TABLE = _table(
    "candles", ("market", "text"), ("interval", "text"), ("window_start", "timestamptz"), ("open", "int8"),
    ("high", "int8"), ("low", "int8"), ("close", "int8"), ("volume", "int8"), ("quote_volume", "numeric"),
    ("trade_count", "int8"), ("first_trade_id", "int8"), ("last_trade_id", "int8"), ("final", "bool"))
SNAPSHOTS_TABLE = _table(
    "book_snapshots", ("market", "text"), ("ts", "timestamptz"), ("book_seq", "int8"), ("bids", "jsonb"),
    ("asks", "jsonb"))

RECORD_DIGEST = Column("record_digest", "bytea")


@dataclass(frozen=True)
class Journal:
    """A table of a gap-free per-market stream (trades, order events): ``values`` are the columns a
    record fills, ``written`` the same plus the digest of the record (what the sink writes)."""

    topic: str
    values: Table
    key: str

    @property
    def name(self) -> str:
        return self.values.name

    @property
    def written(self) -> Table:
        return Table(self.values.name, (*self.values.columns, RECORD_DIGEST))


TRADE_JOURNAL = Journal(TRADES, TRADES_TABLE, "trade_id")
EVENT_JOURNAL = Journal(ORDERS_EVENTS, EVENTS_TABLE, "seq")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_from_ms(ms: int) -> datetime:
    """Milliseconds since the epoch as an aware UTC datetime (exact; faster than fromtimestamp)."""
    return _EPOCH + timedelta(0, 0, 0, ms)


def json_default(value: Any) -> Any:
    """How the sink writes values JSON has no type for (bytes as hex, the rest as text)."""
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def json_dumps(value: Any) -> str:
    return json.dumps(value, default=json_default)


def trade_row_reader(codec: Codec) -> Callable[[bytes | None], tuple[Any, ...]]:
    """A reader of ``trades`` values straight into ``trades`` rows (no dict per trade)."""
    return codec.row_reader(TRADES, TRADES_TABLE.names, {"ts": utc_from_ms})


def event_row(v: Mapping[str, Any]) -> tuple[Any, ...]:
    """The ``order_events`` row of a decoded ``orders.events`` value."""
    name, body = v["body"]
    return (v["market"], v["seq"], utc_from_ms(v["ts"]), v["command_id"], name.rsplit(".", 1)[-1],
            body.get("order_id"), body.get("account"), Jsonb(body, dumps=json_dumps))


def candle_row(v: Mapping[str, Any]) -> tuple[Any, ...]:
    """The ``candles`` row of a decoded ``md.candles`` value."""
    return (v["market"], v["interval"], utc_from_ms(v["window_start"]), v["open"], v["high"], v["low"], v["close"],
            v["volume"], v["quote_volume"], v["trade_count"], v["first_trade_id"], v["last_trade_id"], v["final"])


def snapshot_row(snapshot: tuple[str, int, int, list[list[int]], list[list[int]]]) -> tuple[Any, ...]:
    """The ``book_snapshots`` row of a snapshot the book fold took (``records.BookStep.snapshot``)."""
    market, ts, seq, bids, asks = snapshot
    return (market, utc_from_ms(ts), seq, Jsonb(bids), Jsonb(asks))
