"""Bounded reads of one topic partition, outside any consumer group (recovery, checkers, tools).

``read_range`` yields the committed records with ``start <= offset < end``; it stops when the
consumer's position reaches ``end`` (transaction markers advance the position without a record),
so it terminates on a partition whose tail is made of control records.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import stamina
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.runtime.clients import consumer_config


class ReadTimeout(RuntimeError):
    """No progress for ``idle_timeout`` seconds before reaching the end offset."""


def standalone_consumer(bootstrap: str, **overrides: object) -> Consumer:
    config = consumer_config(bootstrap, f"xchg-reader-{uuid.uuid4().hex[:8]}", **overrides)
    # Bounded reads end at a known offset: never let the broker hold a fetch open waiting for more.
    config.setdefault("fetch.wait.max.ms", 10)
    config.setdefault("fetch.max.bytes", 104857600)
    config.setdefault("max.partition.fetch.bytes", 67108864)
    return Consumer(config)


# Errors of a partition whose leader is moving or not elected yet (a topic just created), and the
# client-side "unknown" of a topic or partition whose metadata has not reached this client yet
# (seen right after a broker restart with many topics). A partition that really does not exist
# fails once the retry time is up.
_TRANSIENT = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION,
              KafkaError._TRANSPORT, KafkaError._TIMED_OUT}


def _retriable(error: Exception) -> bool:
    if not isinstance(error, KafkaException):
        return False
    kafka_error: KafkaError = error.args[0]
    return kafka_error.retriable() or kafka_error.code() in _TRANSIENT


def topic_partitions(client: Consumer | AdminClient, topic: str, timeout: float = 30.0) -> list[int]:
    """The partition numbers of ``topic``, sorted; empty if the broker does not know the topic."""
    meta = client.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        return []
    return sorted(meta.partitions)


def watermarks(consumer: Consumer, topic: str, partition: int, timeout: float = 30.0) -> tuple[int, int]:
    """Low and high watermark, retrying retriable errors (a new topic's leader is being elected)."""
    for attempt in stamina.retry_context(on=_retriable, attempts=None, timeout=timeout, wait_initial=0.05,
                                         wait_max=1.0):
        with attempt:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout,
                                                       cached=False)
    return int(low), int(high)


def read_range(consumer: Consumer, topic: str, partition: int, start: int, end: int,
               batch: int = 1000, idle_timeout: float = 30.0) -> Iterator[Message]:
    if start >= end:
        return
    tp = TopicPartition(topic, partition, start)
    consumer.assign([tp])
    idle = 0.0
    try:
        while True:
            messages = consumer.consume(num_messages=batch, timeout=0.05)
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == error._PARTITION_EOF:
                        continue
                    raise KafkaException(error)
                offset = message.offset() or 0
                if offset >= end:
                    return
                yield message
            position = consumer.position([TopicPartition(topic, partition)])[0].offset
            if position >= end or (messages and (messages[-1].offset() or 0) >= end - 1):
                return
            idle = 0.0 if messages else idle + 0.05
            if idle >= idle_timeout:
                raise ReadTimeout(f"{topic}[{partition}]: stuck at offset {position} before {end}")
    finally:
        consumer.unassign()


def committed_total(bootstrap: str, group: str, topic: str, partitions: int, timeout: float = 5.0) -> int | None:
    """Sum of ``group``'s committed offsets on ``topic`` (partitions without one count 0), or
    None when the broker does not answer in time.

    read_uncommitted on purpose: a read_committed client asks for *stable* offsets, which the
    broker withholds while any transaction of the group is pending; a progress probe wants the
    last decided ones."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                      "isolation.level": "read_uncommitted"})
    try:
        offsets = probe.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=timeout)
    except KafkaException:
        return None
    finally:
        probe.close()
    return sum(max(tp.offset, 0) for tp in offsets)

