"""``xchg settle batch``: ``trades`` → pure batcher → ``settlement.batches``, exactly once.

**Choice: a Kafka transaction per emission (with ``send_offsets_to_transaction``), like the
matching processor,** rather than re-formation plus idempotent keys. The batches a crash would
duplicate are identical anyway (the batcher is deterministic), so correctness would survive
either way; but with the transaction the topic holds every batch exactly once, consumers
(submitter, reconciliation, analysts) need no dedup, and a zombie batcher is fenced by its stable
``transactional.id`` instead of interleaving copies.

What the transaction commits is *state*, so a restart re-forms exactly what an uninterrupted run
would have formed:

* the emitted batches (per market: last trade id, batch seq, batch hash = the resume cursor, read
  back at start-up from the tail of ``settlement.batches`` with ``read_committed``), and
* per ``trades`` partition the offset of the *first trade of the oldest still-open batch* of any
  market in it (or the position when nothing is open). On restart the open batches are rebuilt by
  re-reading from there; trades already inside emitted batches are skipped by trade id (the
  ``SequenceTracker`` in the batcher classifies them as duplicates and reports gaps).

Batches are tied to a deployment (their hashes commit to its token addresses): each record carries
the Settlement address in the ``xchg.settlement`` header, the consumer group and transactional id
default to names containing it, and every reader (resume, submitter, reconciliation) keeps only its
deployment's records, so a redeployed dev chain starts its batches afresh beside the old ones.

Any Kafka transaction error ends the process non-zero after an abort: restart is the recovery path
(the new producer with the same id fences the old one; the state comes back as above). So does a
consumed error that the client cannot go on after (``ClientFatal``, see ``usable``); other consumer
errors are logged and skipped. A trade-id gap is refused (``BatchInputError``): settlement never
skips a trade.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, Producer, TopicPartition

from connectors.settlement.batcher import Batch, BatchConfig, Batcher, Chain, MarketCursor, TradeIn
from connectors.settlement.chain import Deployment
from connectors.settlement.economics import MarketUnits, account_address
from connectors.settlement.errors import SettlementError
from streams.observability import get_logger
from streams.runtime.clients import consumer_config, producer_config, raise_if_fatal
from streams.runtime.reader import read_range, standalone_consumer, topic_partitions, watermarks
from streams.serde.codec import Codec
from streams.serde.topics import SETTLEMENT_BATCHES, TRADES
from streams.settings import Settings

log = get_logger("settlement.batcher")


@dataclass(frozen=True)
class BatcherRun:
    group: str | None = None  # default: <prefix>xchg-settle-batcher-<settlement address>
    transactional_id: str | None = None  # default: the group
    flush_idle_s: float | None = None  # close open batches after this long without input (demo/tests)
    idle_exit_s: float | None = None  # stop after this long without input
    commit_timeout_s: float = 30.0


def batch_config(settings: Settings) -> BatchConfig:
    return BatchConfig(max_trades=settings.settlement_batch_trades, max_age_ms=settings.settlement_batch_max_age_ms,
                       max_deltas=settings.settlement_max_deltas, taker_fee_bps=settings.settlement_taker_fee_bps,
                       fee_account=settings.settlement_fee_account)


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    partitions = topic_partitions(consumer, topic)
    if not partitions:
        raise SettlementError(f"topic {topic} not found (xchg topics apply)")
    return partitions


DEPLOYMENT_HEADER = "xchg.settlement"


Headers = dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None  # as consumed


def usable(message: Message, logger: Any = log) -> bool:
    """True for a record. A consumed error goes through ``raise_if_fatal`` (``ClientFatal`` for a
    fenced static member, a fatal or an authorisation error, which librdkafka may report with code
    ``_FATAL`` while ``fatal()`` is false); any other error is logged and the message skipped."""
    error = message.error()
    if error is None:
        return True
    raise_if_fatal(error)
    logger.warning("consumer error skipped", error=error.name(), reason=error.str())
    return False


def of_deployment(headers: Headers, deployment: str) -> bool:
    """Whether a settlement.batches record belongs to this deployment (its hashes use its tokens)."""
    return dict(headers or []).get(DEPLOYMENT_HEADER) == deployment.encode()


def read_batches(bootstrap: str, topic: str, codec: Codec, deployment: str) -> list[Batch]:
    """Every committed batch of ``deployment`` in the topic (partition order = per-market order)."""
    consumer = standalone_consumer(bootstrap)
    out: list[Batch] = []
    try:
        for p in _partitions(consumer, topic):
            low, high = watermarks(consumer, topic, p)
            for m in read_range(consumer, topic, p, low, high):
                if of_deployment(m.headers(), deployment):
                    out.append(Batch.from_record(codec.decode(SETTLEMENT_BATCHES, m.value())))
    finally:
        consumer.close()
    return out


def cursors(batches: list[Batch]) -> dict[str, MarketCursor]:
    last: dict[str, MarketCursor] = {}
    for b in batches:
        cur = last.get(b.market)
        if cur is None or b.batch_seq > cur.last_batch_seq:
            last[b.market] = MarketCursor(b.last_trade_id, b.batch_seq, b.batch_hash)
    return last


class BatchService:
    def __init__(self, settings: Settings, deployment: Deployment, units: dict[str, MarketUnits],
                 run: BatcherRun, codec: Codec | None = None) -> None:
        self.settings, self.run_config, self.codec = settings, run, codec or Codec()
        self.ns = settings.namespace
        self.in_topic, self.out_topic = self.ns(TRADES), self.ns(SETTLEMENT_BATCHES)
        bootstrap = settings.bootstrap_servers
        group = settings.client_identity(run.group, f"xchg-settle-batcher-{deployment.settlement.lower()}")
        self.producer = Producer(producer_config(bootstrap, run.transactional_id or group,
                                                 **{"message.max.bytes": 16_777_216}))
        self.producer.init_transactions(run.commit_timeout_s)  # fences a previous incarnation
        self.deployment = deployment.settlement
        resume = cursors(read_batches(bootstrap, self.out_topic, self.codec, self.deployment))
        self.batcher = Batcher(batch_config(settings), units, Chain(account_address, deployment.tokens), resume)
        self.consumer = Consumer(consumer_config(bootstrap, group, **{"fetch.wait.max.ms": 50}))
        parts = _partitions(self.consumer, self.in_topic)
        committed = self.consumer.committed([TopicPartition(self.in_topic, p) for p in parts], timeout=30)
        self.next_offset: dict[int, int] = {}
        assign = []
        for tp in committed:
            start = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.next_offset[tp.partition] = max(tp.offset, 0)
            assign.append(TopicPartition(self.in_topic, tp.partition, start))
        self.consumer.assign(assign)
        self.open_at: dict[str, tuple[int, int]] = {}  # market -> (partition, offset of its open batch's first trade)
        self.emitted = 0
        self.trades = 0
        self._stop = False
        log.info("batcher started", resume={m: c.last_trade_id for m, c in resume.items()}, committed=self.next_offset)

    def stop(self, *_: Any) -> None:
        self._stop = True

    def _offsets(self) -> list[TopicPartition]:
        out = []
        for p, nxt in self.next_offset.items():
            opens = [off for part, off in self.open_at.values() if part == p]
            out.append(TopicPartition(self.in_topic, p, min([nxt, *opens])))
        return out

    def _emit(self, batches: list[Batch]) -> None:
        producer = self.producer
        producer.begin_transaction()
        try:
            for b in batches:
                producer.produce(self.out_topic, self.codec.encode(SETTLEMENT_BATCHES, b.record()), b.market.encode(),
                                 headers=[(DEPLOYMENT_HEADER, self.deployment.encode())])
            producer.send_offsets_to_transaction(self._offsets(), self.consumer.consumer_group_metadata(),
                                                 self.run_config.commit_timeout_s)
            producer.commit_transaction(self.run_config.commit_timeout_s)
        except KafkaException as exc:
            if exc.args[0].txn_requires_abort():
                with contextlib.suppress(KafkaException):
                    producer.abort_transaction(self.run_config.commit_timeout_s)
            raise
        self.emitted += len(batches)
        for b in batches:
            log.info("batch", market=b.market, batch_seq=b.batch_seq, first=b.first_trade_id, last=b.last_trade_id,
                     reason=b.close_reason, deltas=len(b.deltas))

    def run(self) -> int:
        with contextlib.suppress(ValueError):  # not the main thread (tests run it in-process)
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        idle_since = time.monotonic()
        flushed = True
        try:
            while not self._stop:
                messages = self.consumer.consume(2000, 0.1)
                closed: list[Batch] = []
                for m in messages:
                    if not usable(m):  # raises ClientFatal for an error the consumer cannot go on after
                        continue
                    trade = TradeIn.from_record(self.codec.decode(TRADES, m.value()))
                    closed.extend(self.batcher.add(trade))
                    self.trades += 1
                    first = self.batcher.open_first(trade.market)
                    position = (m.partition() or 0, m.offset() or 0)  # both set on a consumed record
                    if first is None:
                        self.open_at.pop(trade.market, None)
                    elif first.trade_id == trade.trade_id:
                        self.open_at[trade.market] = position
                    self.next_offset[position[0]] = position[1] + 1
                if messages:
                    idle_since, flushed = time.monotonic(), False
                    if closed:
                        self._emit(closed)
                    continue
                idle = time.monotonic() - idle_since
                if not flushed and self.run_config.flush_idle_s is not None and idle >= self.run_config.flush_idle_s:
                    closed = self.batcher.flush()
                    self.open_at.clear()
                    if closed:
                        self._emit(closed)
                    flushed = True
                if self.run_config.idle_exit_s is not None and idle >= self.run_config.idle_exit_s:
                    break
        finally:
            with contextlib.suppress(KafkaException):
                self.consumer.close()
            self.producer.flush(10)
        return self.emitted
