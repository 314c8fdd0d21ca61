"""Exactly-once basics on the real broker: an aborted transaction is invisible to a
``read_committed`` consumer, a committed one is visible exactly once, in order."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.runtime.clients import consumer_config, make_producer

pytestmark = pytest.mark.integration


def _create_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # replication_factor -1: the broker's default, sized to the cluster (1 locally, 3 with --brokers 3)
    for future in admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=-1)]).values():
        future.result(30)


def _read_all(bootstrap: str, topic: str, isolation: str, group: str) -> list[bytes]:
    consumer = Consumer(consumer_config(bootstrap, group, **{"isolation.level": isolation}))
    tp = TopicPartition(topic, 0)
    _, high = consumer.get_watermark_offsets(tp, timeout=30)
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    # Read until the position passes the high watermark: control records (commit/abort markers)
    # advance the position without yielding a message. Bounded: 120 empty polls at most.
    for _ in range(120):
        for message in consumer.consume(num_messages=500, timeout=1):
            assert message.error() is None, message.error()
            values.append(message.value())
        if consumer.position([tp])[0].offset >= high:
            break
    else:
        pytest.fail(f"{topic}: did not reach offset {high}")
    consumer.close()
    return values


def test_aborted_invisible_committed_visible_once(kafka_bootstrap: str, unique: str) -> None:
    topic = f"test.eos.{unique}"
    _create_topic(kafka_bootstrap, topic)
    producer = make_producer(kafka_bootstrap, transactional_id=f"test-eos-{unique}")
    producer.init_transactions(30)

    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=b"BTC-USD", value=f"aborted-{i}".encode())
    producer.flush(30)
    producer.abort_transaction(30)

    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=b"BTC-USD", value=f"committed-{i}".encode())
    producer.commit_transaction(30)

    committed = _read_all(kafka_bootstrap, topic, "read_committed", f"g-rc-{unique}")
    uncommitted = _read_all(kafka_bootstrap, topic, "read_uncommitted", f"g-ru-{unique}")

    assert committed == [f"committed-{i}".encode() for i in range(5)]
    # The aborted records really reached the log: only the isolation level hides them.
    assert sorted(v for v in uncommitted if v.startswith(b"aborted")) == sorted(
        f"aborted-{i}".encode() for i in range(10))
    assert len(uncommitted) == 15


def test_consumed_offsets_commit_atomically_with_output(kafka_bootstrap: str, unique: str) -> None:
    """read-process-write: output records and the input offsets commit in one transaction."""
    source, sink = f"test.src.{unique}", f"test.dst.{unique}"
    _create_topic(kafka_bootstrap, source)
    _create_topic(kafka_bootstrap, sink)
    seed = make_producer(kafka_bootstrap)
    for i in range(20):
        seed.produce(source, key=b"k", value=str(i).encode())
    seed.flush(30)

    group = f"g-rpw-{unique}"
    consumer = Consumer(consumer_config(kafka_bootstrap, group))
    consumer.assign([TopicPartition(source, 0, 0)])
    producer = make_producer(kafka_bootstrap, transactional_id=f"test-rpw-{unique}")
    producer.init_transactions(30)

    seen: list[bytes] = []
    while len(seen) < 20:
        seen.extend(m.value() for m in consumer.consume(20, timeout=5) if m.error() is None)
    # First attempt: produce the first 10 and abort — neither output nor offsets may survive.
    producer.begin_transaction()
    for value in seen[:10]:
        producer.produce(sink, value=value)
    producer.send_offsets_to_transaction([TopicPartition(source, 0, 10)], consumer.consumer_group_metadata(), 30)
    producer.abort_transaction(30)
    committed = consumer.committed([TopicPartition(source, 0)], timeout=30)
    assert committed[0].offset < 0  # nothing committed for the group

    producer.begin_transaction()
    for value in seen:
        producer.produce(sink, value=value)
    producer.send_offsets_to_transaction([TopicPartition(source, 0, 20)], consumer.consumer_group_metadata(), 30)
    producer.commit_transaction(30)
    committed = consumer.committed([TopicPartition(source, 0)], timeout=30)
    assert committed[0].offset == 20
    consumer.close()

    out = _read_all(kafka_bootstrap, sink, "read_committed", f"g-check-{unique}")
    assert out == [str(i).encode() for i in range(20)]
