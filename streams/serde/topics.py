"""The topic table: the one place that says which Avro record a topic's values are.

Every topic is keyed by market (a UTF-8 string) except ``engine.snapshots`` (keyed by the
``orders.commands`` partition). Partition counts, retention and compaction live in the declarative
topics file under ``infra/kafka/``; this table only fixes the value contract.

``dlq.orders.commands`` has no schema: its values are the raw bytes that could not be decoded from
``orders.commands``, with the reason in the record headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "DLQ_MARKETDATA",
    "DLQ_ORDERS_COMMANDS",
    "DLQ_SINK",
    "ENGINE_HASHES",
    "ENGINE_SNAPSHOTS",
    "MD_BOOK",
    "MD_CANDLES",
    "MD_TICKER",
    "ORDERS_COMMANDS",
    "ORDERS_EVENTS",
    "SETTLEMENT_BATCHES",
    "SETTLEMENT_STATUS",
    "TOPICS",
    "TRADES",
    "Topic",
    "UnknownTopicError",
    "topic",
]

ORDERS_COMMANDS: Final = "orders.commands"
ORDERS_EVENTS: Final = "orders.events"
TRADES: Final = "trades"
MD_BOOK: Final = "md.book"
MD_CANDLES: Final = "md.candles"
MD_TICKER: Final = "md.ticker"
ENGINE_SNAPSHOTS: Final = "engine.snapshots"
ENGINE_HASHES: Final = "engine.hashes"
SETTLEMENT_BATCHES: Final = "settlement.batches"
SETTLEMENT_STATUS: Final = "settlement.status"
DLQ_ORDERS_COMMANDS: Final = "dlq.orders.commands"
DLQ_SINK: Final = "dlq.sink"
DLQ_MARKETDATA: Final = "dlq.marketdata"


class UnknownTopicError(KeyError):
    """A topic that is not in the table (or has no value schema where one is needed)."""


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    value_record: str | None  # full Avro name of the value record; None = raw bytes, no schema
    doc: str

    @property
    def subject(self) -> str:
        """Confluent Schema Registry subject of the value schema (TopicNameStrategy)."""
        return f"{self.name}-value"


_ROWS: Final = (
    Topic(ORDERS_COMMANDS, "xchg.v1.OrderCommand", "commands into the engine, LogAppendTime"),
    Topic(ORDERS_EVENTS, "xchg.v1.OrderEvent", "the engine's full gap-free per-market journal"),
    Topic(TRADES, "xchg.v1.Trade", "one record per execution"),
    Topic(MD_BOOK, "xchg.v1.BookDelta", "aggregated price-level changes, gap-free book_seq"),
    Topic(MD_CANDLES, "xchg.v1.Candle", "OHLCV per market and interval"),
    Topic(MD_TICKER, "xchg.v1.Ticker", "best bid/ask, last trade and 24 h statistics per market, compacted"),
    Topic(ENGINE_SNAPSHOTS, "xchg.v1.EngineSnapshot", "compacted engine state per input partition"),
    Topic(ENGINE_HASHES, "xchg.v1.StateHash", "periodic canonical state hashes"),
    Topic(SETTLEMENT_BATCHES, "xchg.v1.SettlementBatch", "deterministic trade batches with net deltas"),
    Topic(SETTLEMENT_STATUS, "xchg.v1.SettlementStatus", "submitter state transitions per batch"),
    Topic(DLQ_ORDERS_COMMANDS, None, "undecodable orders.commands values, raw, reason in headers"),
    Topic(DLQ_SINK, None, "records the analytics sink could not decode or the database rejected, raw, reason in headers"),
    Topic(DLQ_MARKETDATA, None, "trades the candle processor could not fold (a candle would overflow), raw, reason in headers"),
)

TOPICS: Final = MappingProxyType({row.name: row for row in _ROWS})


def topic(name: str) -> Topic:
    """The table row of ``name``; :class:`UnknownTopicError` if there is none."""
    try:
        return TOPICS[name]
    except KeyError:
        raise UnknownTopicError(name) from None
