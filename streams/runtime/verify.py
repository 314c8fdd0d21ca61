"""Checks over the committed output topics (``xchg verify stream``, crash tests).

``check_streams`` reads ``orders.events``, ``trades`` and ``md.book`` from the beginning with
``read_committed`` and reports, per market, the last sequence and every gap or duplicate.
``check_outcomes`` reads ``orders.commands`` too and verifies that every command has exactly one
outcome (an outcome event, or a dead letter).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Message

from streams.domain.events import is_outcome
from streams.runtime.namespace import DEFAULT, Namespace
from streams.runtime.reader import read_range, standalone_consumer, topic_partitions, watermarks
from streams.runtime.records import event_from_record
from streams.runtime.sequence import BookChain, SequenceTracker
from streams.serde.codec import Codec
from streams.serde.topics import DLQ_ORDERS_COMMANDS, MD_BOOK, ORDERS_COMMANDS, ORDERS_EVENTS, TRADES


def read_topic(consumer: Consumer, topic: str) -> Iterator[Message]:
    """Every committed record of every partition of ``topic``, partition by partition."""
    for partition in topic_partitions(consumer, topic):
        low, high = watermarks(consumer, topic, partition)
        yield from read_range(consumer, topic, partition, low, high, batch=5000)


@dataclass
class StreamReport:
    events: SequenceTracker = field(default_factory=SequenceTracker)
    trades: SequenceTracker = field(default_factory=SequenceTracker)
    book: BookChain = field(default_factory=BookChain)
    trade_ids_in_events: Counter[tuple[str, int]] = field(default_factory=Counter)
    trade_ids: Counter[tuple[str, int]] = field(default_factory=Counter)

    @property
    def clean(self) -> bool:
        return (self.events.clean and self.trades.clean and not self.book.breaks
                and self.trade_ids == self.trade_ids_in_events)


def check_streams(bootstrap: str, codec: Codec, ns: Namespace = DEFAULT) -> StreamReport:
    report = StreamReport()
    consumer = standalone_consumer(bootstrap)
    try:
        for message in read_topic(consumer, ns(ORDERS_EVENTS)):
            record = codec.decode(ORDERS_EVENTS, message.value())
            report.events.observe(record["market"], record["seq"])
            name, body = record["body"]
            if name.endswith("TradeExecuted"):
                report.trade_ids_in_events[(record["market"], body["trade_id"])] += 1
        for message in read_topic(consumer, ns(TRADES)):
            record = codec.decode(TRADES, message.value())
            report.trades.observe(record["market"], record["trade_id"])
            report.trade_ids[(record["market"], record["trade_id"])] += 1
        for message in read_topic(consumer, ns(MD_BOOK)):
            record = codec.decode(MD_BOOK, message.value())
            report.book.observe(record["market"], record["book_seq"], record["prev_book_seq"], record["snapshot"],
                                record["part"], record["parts"])
    finally:
        consumer.close()
    return report


@dataclass
class OutcomeReport:
    commands: int = 0
    dead_letters: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.missing and not self.duplicated


def check_outcomes(bootstrap: str, codec: Codec, ns: Namespace = DEFAULT) -> OutcomeReport:
    """Every command in ``orders.commands`` has exactly one outcome event or one dead letter."""
    report = OutcomeReport()
    consumer = standalone_consumer(bootstrap)
    try:
        for message in read_topic(consumer, ns(ORDERS_EVENTS)):
            record = codec.decode(ORDERS_EVENTS, message.value())
            if is_outcome(event_from_record(record)):
                report.outcomes[record["command_id"]] += 1
        dead_sources: Counter[str] = Counter()
        for message in read_topic(consumer, ns(DLQ_ORDERS_COMMANDS)):
            headers = dict(message.headers() or [])
            source = headers.get("xchg.source", b"")
            dead_sources[source.decode() if isinstance(source, bytes) else str(source)] += 1
        report.dead_letters = sum(dead_sources.values())
        for message in read_topic(consumer, ns(ORDERS_COMMANDS)):
            report.commands += 1
            source = f"{ns(ORDERS_COMMANDS)}/{message.partition()}/{message.offset()}"
            if source in dead_sources:
                if dead_sources[source] > 1:
                    report.duplicated.append(source)
                continue
            command_id = codec.decode(ORDERS_COMMANDS, message.value())["command_id"]
            count = report.outcomes.get(command_id, 0)
            if count == 0:
                report.missing.append(command_id)
            elif count > 1:
                report.duplicated.append(command_id)
    finally:
        consumer.close()
    return report
