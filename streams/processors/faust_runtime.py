"""How this project runs a faust-streaming worker (the candle and the ticker processors): an app
whose consumer reads committed records only, the broker list, and the exit of a crashed agent.

- **read_committed.** The engine writes ``trades`` and ``md.book`` in Kafka transactions; a
  processor must never fold a record of an aborted or open transaction. faust 0.15 has no
  isolation setting (it reads committed data only under ``processing_guarantee="exactly_once"``,
  which would also make the worker transactional), so ``CommittedApp`` gives the worker's
  aiokafka consumer ``isolation_level="read_committed"`` and reports the last stable offset as a
  partition's end (the end such a consumer can reach, for the idle checks).
- **One broker list.** faust takes every bootstrap server (``broker_urls``), not only the first:
  a worker starts while any broker of the cluster answers.
- **A crashed agent ends the process** with ``EXIT_AGENT_CRASHED``: faust alone keeps a process
  alive without its agent (no output while it looks healthy); a process manager restarts it.
- **faust may skip records** around a rebalance or a recovery (its stream drops records that
  arrive while flow control is paused or carry an old generation, and acks them). Each processor
  therefore keeps its own folded position per input partition in its changelog and reads a
  missed range from the topic itself (``read_committed_range``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import faust
from faust.transport.drivers import aiokafka as faust_kafka


def broker_urls(bootstrap: str) -> list[str]:
    """faust's broker list for a comma-separated bootstrap list (every server, in order)."""
    return [f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip()]


def read_committed_range(bootstrap: str, topic: str, partition: int, start: int, end: int) -> Iterator[Any]:
    """The committed records at offsets ``start <= offset < end`` of one partition (a standalone,
    read_committed consumer of its own, closed afterwards)."""
    from streams.runtime.reader import read_range, standalone_consumer

    consumer = standalone_consumer(bootstrap)
    try:
        yield from read_range(consumer, topic, partition, start, end)
    finally:
        consumer.close()


class _CommittedConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread, reading committed records only."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its fetcher when the consumer starts (not yet: it is just built).
        consumer._isolation_level = "read_committed"
        return consumer

    def highwater(self, tp: Any) -> int:
        """The last stable offset: the end a read_committed consumer can reach."""
        consumer = self._ensure_consumer()
        stable = consumer.last_stable_offset(tp)
        return int(stable) if stable is not None and stable >= 0 else int(consumer.highwater(tp) or 0)


class _CommittedConsumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _CommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _CommittedTransport(faust_kafka.Transport):
    Consumer = _CommittedConsumer


class CommittedApp(faust.App):
    """A faust app whose consumer reads committed records only (see the module doc)."""

    def _new_transport(self) -> Any:
        return _CommittedTransport(self.conf.broker_consumer, self)


class WorkerConfig(Protocol):
    """What a processor's config says about its faust worker."""

    @property
    def bootstrap(self) -> str: ...

    @property
    def partitions(self) -> int: ...

    @property
    def commit_interval_s(self) -> float: ...

    @property
    def session_timeout_s(self) -> float: ...

    @property
    def instance_id(self) -> str: ...

    @property
    def data_dir(self) -> Path | None: ...

    @property
    def app_id(self) -> str: ...


def worker_app(config: WorkerConfig, **overrides: Any) -> CommittedApp:
    """The faust app of one processor, configured the one way every processor runs: the memory
    store (state lives in the changelog), static group membership (a restarted worker gets its
    partitions back at once), raw bytes in and out (the project's codec does Avro), acks from all
    in-sync replicas, no web server, faust's data folder under ``data_dir`` (a temporary folder
    when None, never the working directory). ``overrides`` adds or replaces faust settings."""
    data_dir = (config.data_dir or Path(tempfile.gettempdir()) / "xchg-faust") / config.app_id
    data_dir.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "broker": broker_urls(config.bootstrap), "store": "memory://",
        "topic_partitions": config.partitions, "topic_replication_factor": 1,
        "broker_commit_interval": config.commit_interval_s, "broker_session_timeout": config.session_timeout_s,
        "broker_heartbeat_interval": 1.0, "consumer_group_instance_id": config.instance_id,
        "stream_recovery_delay": 0.0, "consumer_auto_offset_reset": "earliest", "web_enabled": False,
        "datadir": str(data_dir), "producer_acks": -1, "producer_linger": 0.0, "table_standby_replicas": 0,
        "key_serializer": "raw", "value_serializer": "raw",
    }
    return CommittedApp(config.app_id, **{**settings, **overrides})
