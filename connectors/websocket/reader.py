"""The Kafka side of a worker: a thread that plans where to start (``startup``), then reads every
partition of ``md.book``, ``trades``, ``md.candles``, ``md.ticker`` and ``orders.events`` with one
``read_committed`` consumer, partitions assigned explicitly (no group, nothing committed: every
worker sees everything), and hands decoded records to the event loop in batches.

The thread owns the consumer; the loop only receives ``(logical topic, record)`` lists through
``deliver`` and the start plan / catch-up notices through ``on_plan`` / ``on_caught_up``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from connectors.websocket import startup
from streams.observability import get_logger
from streams.runtime.clients import consumer_config, records
from streams.runtime.namespace import Namespace
from streams.serde.codec import Codec, DecodeError
from streams.serde.topics import MD_BOOK, MD_CANDLES, MD_TICKER, ORDERS_EVENTS, TRADES

log = get_logger("ws.reader")
TOPICS = (MD_BOOK, TRADES, MD_CANDLES, MD_TICKER, ORDERS_EVENTS)
Batch = list[tuple[str, dict[str, Any]]]


class TopicReader(threading.Thread):
    def __init__(self, bootstrap: str, ns: Namespace, codec: Codec, markets: list[str], *, scan_chunk: int,
                 status_budget: int, lookback_ms: int, deliver: Callable[[Batch], None],
                 on_plan: Callable[[startup.StartPlan], None], on_caught_up: Callable[[str], None],
                 on_failure: Callable[[BaseException], None]) -> None:
        super().__init__(name="ws-kafka-reader", daemon=True)
        self.bootstrap, self.ns, self.codec, self.markets = bootstrap, ns, codec, markets
        self.scan_chunk, self.status_budget, self.lookback_ms = scan_chunk, status_budget, lookback_ms
        self.deliver, self.on_plan, self.on_caught_up, self.on_failure = deliver, on_plan, on_caught_up, on_failure
        self.stopping = threading.Event()
        self.failed: BaseException | None = None

    def _consumer(self) -> Consumer:
        return Consumer(consumer_config(self.bootstrap, f"xchg-ws-{uuid.uuid4().hex[:8]}",
                                        **{"fetch.wait.max.ms": 20, "fetch.min.bytes": 1}))

    def _decoder(self, logical: str) -> Callable[[bytes | None], dict[str, Any]]:
        return lambda value: self.codec.decode(logical, value)

    def plan(self) -> startup.StartPlan:
        plan = startup.StartPlan()
        consumer = self._consumer()
        try:
            startup.plan_book(consumer, self.ns(MD_BOOK), self.markets, self.scan_chunk,
                              self._decoder(MD_BOOK), plan)
            startup.plan_states(consumer, self.ns(ORDERS_EVENTS), self.markets, self.scan_chunk,
                                self.status_budget, self._decoder(ORDERS_EVENTS), plan)
            startup.plan_latest(consumer, self.ns(MD_TICKER), self.markets, self.scan_chunk, self.status_budget,
                                self._decoder(MD_TICKER), plan)
            since = int(time.time() * 1000) - self.lookback_ms
            startup.plan_since(consumer, self.ns(TRADES), since, plan)
            startup.plan_since(consumer, self.ns(MD_CANDLES), since, plan)
        finally:
            consumer.close()
        return plan

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:  # reported by the server, which stops the worker
            self.failed = error
            log.error("kafka reader stopped", error=str(error))
            self.on_failure(error)

    def _run(self) -> None:
        plan = self.plan()
        self.on_plan(plan)
        consumer = self._consumer()
        logical = {self.ns(t): t for t in TOPICS}
        consumer.assign([TopicPartition(t, p, offset) for (t, p), offset in plan.starts.items()])
        behind: dict[str, set[int]] = {t: set() for t in TOPICS}
        for (t, p), end in plan.ends.items():
            if plan.starts[(t, p)] < end:
                behind[logical[t]].add(p)
        for name, parts in behind.items():
            if not parts:
                self.on_caught_up(name)
        idle_since = time.monotonic()
        try:
            while not self.stopping.is_set():
                messages = consumer.consume(num_messages=1000, timeout=0.05)
                batch: Batch = []
                for message in records(messages, log):
                    logical_name = logical.get(message.topic() or "")
                    if logical_name is None:
                        continue
                    try:
                        batch.append((logical_name, self.codec.decode(logical_name, message.value())))
                    except DecodeError as exc:
                        log.warning("undecodable record skipped", topic=logical_name, offset=message.offset(), error=str(exc))
                if batch:
                    self.deliver(batch)
                    idle_since = time.monotonic()
                if any(behind.values()):
                    self._check_caught_up(consumer, plan, behind, time.monotonic() - idle_since > 1.0)
        finally:
            consumer.close()

    def _check_caught_up(self, consumer: Consumer, plan: startup.StartPlan,
                         behind: dict[str, set[int]], idle: bool) -> None:
        """A partition is caught up when its position reached its start-up end offset (or, after a
        second without records, the offset before it: a transaction marker can end a partition)."""
        for name, parts in behind.items():
            if not parts:
                continue
            physical = self.ns(name)
            try:
                positions = consumer.position([TopicPartition(physical, p) for p in parts])
            except KafkaException:
                continue
            for tp in positions:
                end = plan.ends[(physical, tp.partition)]
                if tp.offset >= end or (idle and tp.offset >= end - 1):
                    parts.discard(tp.partition)
            if not parts:
                log.info("caught up", topic=name)
                self.on_caught_up(name)
