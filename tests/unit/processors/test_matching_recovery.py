"""The matching processor's recovery of a failed partition when the client no longer (or not
yet) knows it: the seek fails, and the partition waits for the next poll instead of the process
crashing (streams/processors/matching.py ``_recover_pending``)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.markets import MarketRegistry
from streams.processors.matching import MatchingConfig, MatchingProcessor
from streams.runtime.partition import PartitionState
from streams.serde.codec import Codec
from streams.settings import load_settings


class FlakyConsumer:
    """Assigned partitions 0 and 1; seeking partition 1 fails as librdkafka does for a partition
    it does not know."""

    def __init__(self) -> None:
        self.paused: set[int] = set()
        self.sought: list[int] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("orders.commands", 0), TopicPartition("orders.commands", 1)]

    def seek(self, tp: TopicPartition) -> None:
        if tp.partition == 1:
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION, "Failed to seek to offset 0"))
        self.sought.append(tp.partition)

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in tps}

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in tps}


class FakeProducer:
    def flush(self, timeout: float) -> int:
        return 0


def test_a_failed_seek_leaves_the_partition_for_the_next_poll() -> None:
    registry = MarketRegistry.load(load_settings().markets_file)
    codec = Codec()
    processor = MatchingProcessor(MatchingConfig(bootstrap="127.0.0.1:1"), registry, codec)
    consumer = FlakyConsumer()
    real_consumer, processor.consumer = processor.consumer, consumer  # type: ignore[assignment]
    try:
        from streams.processors import matching

        def take_all(partitions: list[int]) -> dict[int, Any]:
            taken = {p: matching._Owned(PartitionState(p, registry, codec), FakeProducer(), None)  # type: ignore[arg-type]
                     for p in partitions}
            processor.owned.update(taken)
            return taken

        processor._take_all = take_all  # type: ignore[method-assign]
        processor.needs_recovery = {0, 1}
        recovered = processor._recover_pending()
        assert recovered == {0}
        assert consumer.sought == [0]
        assert processor.needs_recovery == {1} and 1 not in processor.owned and 1 in consumer.paused
        assert 0 in processor.owned and 0 not in consumer.paused
    finally:
        processor.consumer = real_consumer
        processor._workers.shutdown(wait=False)
        real_consumer.close()


class AbortingProducer(FakeProducer):
    def __init__(self) -> None:
        self.aborted = 0

    def abort_transaction(self, timeout: float) -> None:
        self.aborted += 1


def failing_processor() -> tuple[MatchingProcessor, Any]:
    from streams.processors import matching

    registry = MarketRegistry.load(load_settings().markets_file)
    codec = Codec()
    processor = MatchingProcessor(MatchingConfig(bootstrap="127.0.0.1:1"), registry, codec)

    def owned() -> Any:
        return matching._Owned(PartitionState(2, registry, codec), AbortingProducer(), None)  # type: ignore[arg-type]

    return processor, owned


def abortable(code: int) -> KafkaException:
    return KafkaException(KafkaError(code, "failed", txn_requires_abort=True))


def test_a_refused_record_stops_the_process_at_once() -> None:
    from streams.runtime.failures import OutputRefused

    processor, owned = failing_processor()
    try:
        with pytest.raises(OutputRefused, match="partition 2: the transaction of the commands from offset 70"):
            processor._fail(2, owned(), abortable(KafkaError.MSG_SIZE_TOO_LARGE), 70)
    finally:
        processor._workers.shutdown(wait=False)
        processor.consumer.close()


def test_the_same_failure_again_and_again_stops_the_process() -> None:
    from streams.processors.matching import MAX_SAME_FAILURES
    from streams.runtime.failures import OutputRefused

    processor, owned = failing_processor()
    try:
        for _ in range(MAX_SAME_FAILURES - 1):  # recovered each time: a passing trouble
            processor._fail(2, owned(), abortable(KafkaError._TIMED_OUT), 70)
            assert 2 in processor.needs_recovery
        processor._fail(2, owned(), abortable(KafkaError._TIMED_OUT), 71)  # progress: the count starts again
        for _ in range(MAX_SAME_FAILURES - 2):
            processor._fail(2, owned(), abortable(KafkaError._TIMED_OUT), 71)
        with pytest.raises(OutputRefused, match=f"failed {MAX_SAME_FAILURES} time"):
            processor._fail(2, owned(), abortable(KafkaError._TIMED_OUT), 71)
    finally:
        processor._workers.shutdown(wait=False)
        processor.consumer.close()


def test_a_commands_records_are_its_events_and_its_trades_in_order() -> None:
    from streams.domain.commands import OrderType, Place, Side
    from streams.domain.market import MarketSpec
    from streams.engine.matcher import Engine
    from streams.processors.matching import command_records
    from streams.serde.topics import ORDERS_EVENTS, TRADES

    engine = Engine(MarketSpec("M", tick=1, lot=1, min_qty=1))
    engine.apply(Place("c1", 1, "s", "a", Side.SELL, OrderType.LIMIT, 100, 5))
    events = engine.apply(Place("c2", 2, "b", "b", Side.BUY, OrderType.LIMIT, 100, 5))
    records = command_records("M", "c2", events, 3, 41)
    assert [topic for topic, _ in records] == [ORDERS_EVENTS, ORDERS_EVENTS, TRADES, ORDERS_EVENTS, ORDERS_EVENTS]
    assert all(r["command_id"] == "c2" and r["input_partition"] == 3 and r["input_offset"] == 41 for _, r in records)
    trade = records[2][1]
    assert (trade["trade_id"], trade["price"], trade["qty"], trade["maker_order_id"]) == (1, 100, 5, "s")
