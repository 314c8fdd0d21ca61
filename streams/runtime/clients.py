"""Kafka client configurations for the critical path (design §1), in one place.

librdkafka's defaults differ from Java's: idempotence is off, ``auto.offset.reset`` is
``latest``, the partitioner is CRC32-based and Nagle's algorithm is on (Java sets TCP_NODELAY).
Every client of the project is built here with ``murmur2_random`` (so all clients, Java included,
map a market key to the same partition), ``acks=all`` with idempotence, ``read_committed``
consumers without auto-commit that start from the earliest offset when a group has no committed
position, and TCP_NODELAY.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer

from streams.runtime.failures import ClientFatal

__all__ = ["ClientFatal", "consumer_config", "is_fatal", "make_consumer", "make_producer", "producer_config",
           "raise_if_fatal"]

PARTITIONER = "murmur2_random"


# Errors a consumer reports that no retry will cure. librdkafka delivers its fatal errors to a
# consumer as a message whose code is _FATAL and whose fatal() is False (the underlying error is
# in the text), so the code must be checked as well as the flag.
_FATAL_CODES = frozenset({
    KafkaError._FATAL,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
})


def is_fatal(error: KafkaError) -> bool:
    """True when ``error`` means this client is finished (see ``_FATAL_CODES``)."""
    return bool(error.fatal()) or error.code() in _FATAL_CODES


def raise_if_fatal(error: KafkaError | None) -> None:
    """Raise ``ClientFatal`` for an error a consumer cannot go on after; every consume loop of
    the project passes its message errors through here."""
    if error is not None and is_fatal(error):
        raise ClientFatal(f"{error.name()}: {error.str()}")


def records(messages: Iterable[Message], log: Any) -> Iterator[Message]:
    """The records among consumed messages. A fatal error raises ``ClientFatal`` (e.g. another
    consumer took this static instance id: stop rather than sit idle owning nothing, a
    supervisor restarts the process); a partition end is skipped; any other error is logged and
    skipped (librdkafka retries it)."""
    for message in messages:
        error = message.error()
        if error is None:
            yield message
            continue
        raise_if_fatal(error)
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consume error", error=error.str())


def producer_config(bootstrap: str, transactional_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": PARTITIONER,
        "linger.ms": 5,
        "compression.type": "lz4",
        "socket.nagle.disable": True,  # librdkafka leaves Nagle on; small requests must not wait
    }
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
        config["transaction.timeout.ms"] = 60000
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "socket.nagle.disable": True,
    }
    config.update(overrides)
    return config


def make_producer(bootstrap: str, transactional_id: str | None = None, **overrides: Any) -> Producer:
    return Producer(producer_config(bootstrap, transactional_id, **overrides))


def make_consumer(bootstrap: str, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(bootstrap, group_id, **overrides))
