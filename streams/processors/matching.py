"""The matching processor: ``orders.commands`` → engine → events, trades, book deltas,
snapshots and state hashes, one Kafka transaction per batch per input partition.

Per input partition *p* the processor owns a ``PartitionState`` and a transactional producer with
the stable id ``<prefix>-p<p>``: whoever initialises that id last owns *p*'s output, and the
previous owner is fenced (its later commits fail). Every batch of *p*:

    begin → produce outputs (+ a snapshot and its state hashes, encoded in the background
          every N commands: see ``streams.runtime.snapshotter``)
          → send_offsets_to_transaction(p, next offset, group metadata) → commit

Error handling is by class (``KafkaError.fatal/retriable/txn_requires_abort``), never by text:
a retriable commit is retried; anything else aborts when it can, drops the partition's producer
and state, and recovers the partition (snapshot + replay to the committed offset): the same code
path as start-up. A commit that times out has an unknown outcome and is handled the same way:
a new producer with the same id fences the old one, and recovery rewinds to what was committed.

Consumer: static membership (``group.instance.id``) so a restarted instance takes its partitions
back without waiting for a session timeout, cooperative-sticky assignment so a rebalance only
moves the partitions that change owner, ``read_committed``, no auto-commit.
"""

from __future__ import annotations

import contextlib
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.domain.commands import Side
from streams.domain.events import Event, OrderRejected, Trade
from streams.markets import MarketRegistry
from streams.observability import (
    COMMANDS,
    DEAD_LETTERS,
    ORDER_LATENCY,
    OWNED_PARTITIONS,
    RECOVERY_SECONDS,
    REJECTS,
    TRADES,
    TXN_SECONDS,
    get_logger,
)
from streams.runtime.clients import consumer_config, producer_config, records
from streams.runtime.crashpoints import crash_point
from streams.runtime.failures import OutputRefused
from streams.runtime.namespace import DEFAULT, Namespace
from streams.runtime.partition import PartitionState, Processed
from streams.runtime.records import REJECT_W, event_record, trade_record
from streams.runtime.recovery import recover
from streams.runtime.snapshotter import BackgroundSnapshot, SnapshotRecords, encode_snapshot
from streams.serde.codec import Codec, EncodeError
from streams.serde.topics import (
    DLQ_ORDERS_COMMANDS,
    ENGINE_HASHES,
    ENGINE_SNAPSHOTS,
    MD_BOOK,
    ORDERS_COMMANDS,
    ORDERS_EVENTS,
)
from streams.serde.topics import (
    TRADES as TRADES_TOPIC,
)

log = get_logger("matching")
SLOW_BATCH_S = 0.25  # a batch slower than this is logged with where its time went
# A partition whose transaction failed this many times in a row at the same input offset with the
# same error stops the process: the engine is deterministic, so the next try would fail again,
# and a partition looping fail -> recover -> fail while the process looks alive is worse.
MAX_SAME_FAILURES = 5
# Errors that retrying the same records cannot cure (the broker refuses what the engine produced).
_REFUSED = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE,
                      KafkaError.INVALID_RECORD})


def _settings_book_snapshot_every() -> int:
    from streams.settings import load_settings

    return load_settings().engine_book_snapshot_every


@dataclass(frozen=True)
class MatchingConfig:
    bootstrap: str
    group_id: str = "xchg-engine"
    instance_id: str = "engine-1"
    transactional_prefix: str = "xchg-engine"
    batch_size: int = 2000
    linger_ms: int = 5
    snapshot_every: int = 25_000  # per partition; each snapshot also publishes the state hashes
    # Per partition: publish the state hashes alone this often, so that a recovery (which
    # replays from the newest snapshot) crosses recorded hashes and checks its replay.
    hash_every: int = 5_000
    # Per market: after this many md.book deltas, the next md.book record is a full snapshot of
    # the book (default EXCHANGE_ENGINE_BOOK_SNAPSHOT_EVERY), so a consumer that starts from the
    # end of md.book finds a snapshot of every active market in a bounded backward read.
    book_snapshot_every: int = field(default_factory=_settings_book_snapshot_every)
    session_timeout_ms: int = 10_000
    commit_timeout_s: float = 30.0
    max_runtime_s: float | None = None  # stop after this long (benchmarks, demos)
    idle_exit_s: float | None = None  # stop after this long without input (demos)
    namespace: Namespace = DEFAULT


# Changes per md.book record: a change encodes in at most 21 bytes (side, two longs), so a part
# stays under ~420 KB, well inside the topic's 1 MiB max.message.bytes, however large the book.
BOOK_CHANGES_PER_RECORD = 20_000


def book_records(market: str, book_seq: int, prev_book_seq: int, snapshot: bool, ts: int, partition: int,
                 input_offset: int, changes: list[tuple[Side, int, int]],
                 per_record: int = BOOK_CHANGES_PER_RECORD) -> list[dict[str, Any]]:
    """The md.book records of one delta: one, or ``parts`` records of at most ``per_record``
    changes that share every other field (see ``xchg.v1.BookDelta``)."""
    wire = [{"side": side.wire, "price": price, "qty": qty} for side, price, qty in changes]
    chunks = [wire[i:i + per_record] for i in range(0, len(wire), per_record)] or [[]]
    return [{"market": market, "book_seq": book_seq, "prev_book_seq": prev_book_seq, "snapshot": snapshot,
             "seq": book_seq, "ts": ts, "input_partition": partition, "input_offset": input_offset,
             "changes": chunk, "part": i, "parts": len(chunks)} for i, chunk in enumerate(chunks)]


def command_records(market: str, command_id: str, events: list[Event], partition: int,
                    offset: int) -> list[tuple[str, dict[str, Any]]]:
    """What one command's events publish, as ``(logical topic, record)`` in produce order: each
    event on ``orders.events`` and each trade also on ``trades`` (pure: the thin loop encodes,
    produces and counts)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for event in events:
        out.append((ORDERS_EVENTS, event_record(market, event, command_id, partition, offset)))
        if isinstance(event, Trade):
            out.append((TRADES_TOPIC, trade_record(market, event, command_id, partition, offset)))
    return out


@dataclass
class Throughput:
    """What benchmarks and the demo report of a run: commands staged, and (monotonic time,
    commands staged) at the first and the last commit. The processor only feeds it."""

    processed: int = 0
    first_commit: tuple[float, int] | None = None
    last_commit: tuple[float, int] | None = None

    def staged(self, commands: int) -> None:
        self.processed += commands  # counted when staged: a failed batch is processed again

    def committed(self, at: float) -> None:
        self.last_commit = (at, self.processed)
        if self.first_commit is None:
            self.first_commit = self.last_commit


class _Owned:
    """An owned partition: its state, its producer and what the current batch produced."""

    def __init__(self, state: PartitionState, producer: Producer, snapshot_offset: int | None) -> None:
        self.state = state
        self.producer = producer
        self.snapshot_offset = snapshot_offset  # next_offset of the newest snapshot produced
        self.since_snapshot = 0
        self.since_hash = 0
        self.pending: BackgroundSnapshot | None = None  # a snapshot or hash checkpoint being encoded by a child
        self.book_seq: dict[str, int] = {}  # last seq published on md.book per market (0: none yet)
        self.book_deltas: dict[str, int] = {}  # md.book deltas per market since its last snapshot record


class MatchingProcessor:
    def __init__(self, config: MatchingConfig, registry: MarketRegistry, codec: Codec,
                 throughput: Throughput | None = None) -> None:
        self.config = config
        self.throughput = throughput or Throughput()
        self.registry = registry
        self.codec = codec
        self.owned: dict[int, _Owned] = {}
        self.ns = config.namespace
        self.input_topic = self.ns(ORDERS_COMMANDS)
        self.consumer = Consumer(consumer_config(
            config.bootstrap, config.group_id,
            **{
                "group.instance.id": config.instance_id,
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": config.session_timeout_ms,
                "heartbeat.interval.ms": max(500, config.session_timeout_ms // 5),
                "max.poll.interval.ms": 300_000,
                # Let the broker answer a fetch once 100 KB are ready or after 5 ms, not as soon
                # as one record is: with fetch.min.bytes=1 the fetcher followed every produce
                # request of the order gateway (~1000 fetches/s at 5,000 orders/s), which cost the
                # broker and this process ~15 % of a core for nothing, as the loop only takes what
                # accumulated once per cycle (consume linger + staging + commit).
                "fetch.wait.max.ms": 5,
                "fetch.min.bytes": 100_000,
            },
        ))
        # Broker round trips done in parallel (GIL released): commits, and recoveries of several partitions.
        self._workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kafka-wait")
        self.needs_recovery: set[int] = set()  # owned partitions paused until they are recovered
        # Per partition: (input offset, error code, count) of its consecutive failed transactions.
        self._failures: dict[int, tuple[int, int, int]] = {}
        self._stop = False
        self.started = time.monotonic()

    # -- ownership ------------------------------------------------------------------------------
    def _producer(self, partition: int) -> Producer:
        producer = Producer(producer_config(
            self.config.bootstrap, f"{self.config.transactional_prefix}-p{partition}",
            **{"linger.ms": 2, "queue.buffering.max.messages": 1_000_000,
               "queue.buffering.max.kbytes": 1_048_576, "message.max.bytes": 67_108_864,
               "batch.size": 1_000_000,
               # A transaction begun right after the previous commit meets CONCURRENT_TRANSACTIONS
               # until the coordinator has written that commit's markers; librdkafka retries it
               # after retry.backoff.ms (default 100 ms), which would put a floor under latency.
               "retry.backoff.ms": 5, "retry.backoff.max.ms": 250},
        ))
        producer.init_transactions(self.config.commit_timeout_s)
        return producer

    def _take_all(self, partitions: list[int]) -> dict[int, _Owned]:
        """Take ``partitions``: fence their previous owners, read their committed offsets in one
        request, and rebuild each (``_rebuild``). Fencing and rebuilding run in parallel, as much
        of them is waiting on the broker; one partition after another, those waits added up at
        start-up. Partitions rebuilt are owned even if another failed; the first failure is
        raised once all have finished."""
        if not partitions:
            return {}
        # Fence first: until the new producer has aborted the previous owner's open transaction,
        # its pending offset commit keeps the group's committed offset unstable and unreadable.
        producers = dict(zip(partitions, self._workers.map(self._producer, partitions), strict=True))
        committed = {tp.partition: tp.offset for tp in self.consumer.committed(
            [TopicPartition(self.input_topic, p) for p in partitions], timeout=30)}
        futures = {p: self._workers.submit(self._rebuild, p, producers[p], committed[p]) for p in partitions}
        taken: dict[int, _Owned] = {}
        failure: BaseException | None = None
        for partition, future in futures.items():
            try:
                taken[partition] = future.result()
            except BaseException as error:  # re-raised below, once all have finished
                failure = failure or error
        self.owned.update(taken)
        OWNED_PARTITIONS.set(len(self.owned))
        if failure is not None:
            raise failure
        return taken

    def _rebuild(self, partition: int, producer: Producer, committed: int) -> _Owned:
        """The partition's state up to ``committed`` (the group's committed input offset;
        negative: none yet), from its newest snapshot and the input after it."""
        started = time.monotonic()
        state, report = recover(
            self.config.bootstrap, self.registry, self.codec, partition, self.ns,
            target_offset=committed if committed >= 0 else 0,
            progress=lambda done, total: log.info("recovery progress", partition=partition,
                                                  replayed=done, of=total),
        )
        RECOVERY_SECONDS.observe(time.monotonic() - started)
        log.info("partition recovered", partition=partition, snapshot_offset=report.snapshot_offset,
                 committed=committed, replayed=report.replayed, hashes_checked=report.hashes_checked,
                 seconds=round(time.monotonic() - started, 3))
        return _Owned(state, producer, report.snapshot_offset)

    def _release(self, partition: int) -> None:
        owned = self.owned.pop(partition, None)
        OWNED_PARTITIONS.set(len(self.owned))
        if owned is not None:
            if owned.pending is not None:
                owned.pending.cancel()
            # Nothing is pending between batches; a fenced producer raises here, harmlessly.
            with contextlib.suppress(KafkaException):
                owned.producer.flush(0)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        taken = self._take_all([tp.partition for tp in partitions])
        for tp in partitions:
            tp.offset = taken[tp.partition].state.next_offset
        consumer.incremental_assign(partitions)
        # librdkafka keeps a partition's pause flag across revoke and re-assign: one paused by a
        # failed transaction just before it was lost would otherwise never be fetched again.
        if partitions:
            consumer.resume(partitions)
        log.info("assigned", partitions=sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._release(tp.partition)
            self.needs_recovery.discard(tp.partition)
        consumer.incremental_unassign(partitions)
        log.info("revoked", partitions=sorted(tp.partition for tp in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost", partitions=sorted(tp.partition for tp in partitions))
        self._on_revoke(consumer, partitions)

    # -- the loop -------------------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        self._stop = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.consumer.subscribe([self.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        idle_since = time.monotonic()
        try:
            while not self._stop:
                if self.config.max_runtime_s and time.monotonic() - self.started > self.config.max_runtime_s:
                    break
                messages = self.consumer.consume(self.config.batch_size, self.config.linger_ms / 1000)
                # consume() has served any rebalance: recover failed partitions we still own.
                recovered = self._recover_pending() if self.needs_recovery else set()
                if not messages:
                    if not self.owned:
                        idle_since = time.monotonic()  # idle counts only once partitions are owned
                    elif self.config.idle_exit_s and time.monotonic() - idle_since > self.config.idle_exit_s:
                        break
                    continue
                idle_since = time.monotonic()
                by_partition: dict[int, list[Message]] = {}
                for message in records(messages, log):
                    by_partition.setdefault(message.partition() or 0, []).append(message)
                # Skip partitions revoked meanwhile, or fetched before a rewind: the owner reprocesses them.
                self._run_batches({p: batch for p, batch in by_partition.items()
                                   if p in self.owned and p not in recovered})
        finally:
            self.close()

    def close(self) -> None:
        """Graceful stop: snapshot every owned partition (a fast restart), then leave."""
        for partition, owned in list(self.owned.items()):
            if owned.snapshot_offset != owned.state.next_offset:
                try:
                    owned.producer.begin_transaction()
                    self._produce_snapshot(owned.producer, encode_snapshot(owned.state, self.codec))
                    self._commit(owned.producer)
                except KafkaException as exc:
                    log.warning("final snapshot failed", partition=partition, error=str(exc))
            self._release(partition)
        self._workers.shutdown(wait=True)
        with contextlib.suppress(KafkaException):
            self.consumer.close()

    def _run_batches(self, batches: dict[int, list[Message]]) -> None:
        """Stage one transaction per partition (CPU work, in turn), then add the offsets and commit
        them together: those wait on broker round trips with the GIL released, so doing them in
        parallel keeps the partitions from queueing behind each other's round trips."""
        started = time.monotonic()
        staged: list[tuple[int, _Owned, int | None]] = []
        starts = {partition: self.owned[partition].state.next_offset for partition in batches}
        for partition, batch in batches.items():
            owned = self.owned[partition]
            try:
                staged.append((partition, owned, self._stage(partition, owned, batch)))
            except KafkaException as exc:
                self._fail(partition, owned, exc, starts[partition])
            except OutputRefused:
                self._release(partition)  # its state is past what it committed: no final snapshot of it
                raise
        staged_at = time.monotonic()
        group = self.consumer.consumer_group_metadata()
        jobs = [(owned, TopicPartition(self.input_topic, partition, owned.state.next_offset), group)
                for partition, owned, _ in staged]
        if len(jobs) == 1:
            outcomes = [self._try_commit(*jobs[0])]
        else:
            outcomes = list(self._workers.map(lambda job: self._try_commit(*job), jobs))
        done = time.monotonic()
        if done - started > SLOW_BATCH_S:
            log.warning("slow batch", stage_ms=round((staged_at - started) * 1000, 1),
                        commit_ms=round((done - staged_at) * 1000, 1),
                        commands=sum(len(b) for b in batches.values()), partitions=len(batches))
        for (partition, owned, oldest_ts), error in zip(staged, outcomes, strict=True):
            if error is not None:
                self._fail(partition, owned, error, starts[partition])
                continue
            self._failures.pop(partition, None)
            committed_at = time.monotonic()
            if oldest_ts is not None:  # the batch's oldest command: its append time to this commit
                ORDER_LATENCY.observe(max(0.0, time.time() - oldest_ts / 1000))
            self.throughput.committed(committed_at)
            crash_point("after-commit")

    def _try_commit(self, owned: _Owned, offsets: TopicPartition, group: Any) -> KafkaException | None:
        """Add the input offsets to the transaction and commit it (two broker round trips each)."""
        started = time.monotonic()
        try:
            owned.producer.send_offsets_to_transaction([offsets], group, self.config.commit_timeout_s)
            self._commit(owned.producer)
        except KafkaException as exc:
            return exc
        TXN_SECONDS.observe(time.monotonic() - started)
        return None

    def _fail(self, partition: int, owned: _Owned, exc: KafkaException, start: int) -> None:
        """A failed transaction of ``partition`` whose batch began at input offset ``start``."""
        error: KafkaError = exc.args[0]
        log.warning("transaction failed; recovering the partition", partition=partition,
                    error=error.str(), fatal=error.fatal(), abortable=error.txn_requires_abort(),
                    retriable=error.retriable())
        previous = self._failures.get(partition)
        count = previous[2] + 1 if previous is not None and previous[:2] == (start, error.code()) else 1
        self._failures[partition] = (start, error.code(), count)
        if error.code() in _REFUSED or count >= MAX_SAME_FAILURES:
            with contextlib.suppress(KafkaException):
                owned.producer.abort_transaction(self.config.commit_timeout_s)
            self._release(partition)  # its state is past what it committed: no final snapshot of it
            raise OutputRefused(
                f"partition {partition}: the transaction of the commands from offset {start} failed "
                f"{count} time(s) with {error.name()} ({error.str()}); a retry would fail the same way")
        if error.txn_requires_abort():
            # If the abort fails too its outcome is unknown: the new producer that recovery
            # creates with the same transactional id fences the old one and aborts it.
            with contextlib.suppress(KafkaException):
                owned.producer.abort_transaction(self.config.commit_timeout_s)
        self._recover_after_failure(partition)

    def _recover_after_failure(self, partition: int) -> None:
        """Drop the partition's state and producer and pause it; the loop recovers it after its
        next consume(), which first serves any pending rebalance: if the partition was taken from
        us (that is why we were fenced), its revocation arrives there and we must not fence the
        new owner by recreating the producer."""
        self._release(partition)
        # Unpaused (the client no longer knows the partition), its records are skipped as not
        # owned, and recovery seeks back to the committed offset anyway.
        with contextlib.suppress(KafkaException):
            self.consumer.pause([TopicPartition(self.input_topic, partition)])
        self.needs_recovery.add(partition)

    def _recover_pending(self) -> set[int]:
        """Recover the paused partitions still assigned: rebuild, seek to the committed offset, resume."""
        pending, self.needs_recovery = self.needs_recovery, set()
        assigned = {tp.partition for tp in self.consumer.assignment()}
        taken = self._take_all(sorted(pending & assigned))
        resumed: set[int] = set()
        for partition, owned in taken.items():
            tp = TopicPartition(self.input_topic, partition, owned.state.next_offset)
            try:
                self.consumer.seek(tp)
            except KafkaException as exc:
                # The client does not know the partition (yet, or any more: a rebalance is under
                # way, or its metadata has not arrived): keep it paused and try again after the
                # next consume(), which serves the rebalance first. Never a reason to exit.
                log.warning("seek failed; recovering the partition again after the next poll",
                            partition=partition, offset=tp.offset, error=str(exc))
                self._recover_after_failure(partition)
                continue
            self.consumer.resume([tp])
            resumed.add(partition)
        return resumed

    def _stage(self, partition: int, owned: _Owned, batch: list[Message]) -> int | None:
        """Begin the partition's transaction and produce the batch's outputs (offsets and commit
        follow in ``_try_commit``).
        Returns the log time of the batch's oldest command."""
        producer, state = owned.producer, owned.state
        encode = self.codec.encode
        produce = producer.produce
        physical = {ORDERS_EVENTS: self.ns(ORDERS_EVENTS), TRADES_TOPIC: self.ns(TRADES_TOPIC)}
        producer.begin_transaction()
        touched: set[str] = set()
        trades: dict[str, int] = {}
        oldest_ts: int | None = None
        for message in batch:
            offset: int = message.offset()  # type: ignore[assignment]  # never None for a consumed record
            if offset < state.next_offset:
                continue  # already reflected (a re-delivery after a seek)
            ts = message.timestamp()[1]
            if oldest_ts is None:
                oldest_ts = ts
            result: Processed = state.process(offset, message.value(), ts)
            if result.dead is not None:
                DEAD_LETTERS.labels(result.dead.reason).inc()
                self._produce(producer, DLQ_ORDERS_COMMANDS, message.key(), message.value() or b"", headers=[
                    ("xchg.error.reason", result.dead.reason.encode()),
                    ("xchg.error.detail", result.dead.detail[:1000].encode()),
                    ("xchg.source", f"{self.input_topic}/{partition}/{offset}".encode()),
                ])
                continue
            market = result.market
            assert market is not None and result.command is not None
            command_id = result.command.command_id
            key = market.encode()
            touched.add(market)
            try:  # free unless it raises
                for topic, record in command_records(market, command_id, result.events, partition, offset):
                    value = encode(topic, record)
                    try:
                        produce(physical[topic], value, key)
                    except BufferError:  # the queue is full: serve deliveries, then again
                        self._produce(producer, topic, key, value)
                    if topic == TRADES_TOPIC:
                        trades[market] = trades.get(market, 0) + 1
            except EncodeError as error:
                raise OutputRefused(f"partition {partition}: the events of the command at offset {offset} "
                                    f"(command id {command_id!r}) cannot be encoded: {error}") from None
            first = result.events[0]
            if type(first) is OrderRejected:  # a rejection is always a command's only event
                REJECTS.labels(REJECT_W[first.reason]).inc()
        # Metrics once per batch: per-command observations would cost more than the matching.
        for market, count in trades.items():
            TRADES.labels(market).inc(count)
        if touched:
            self._publish_book(producer, partition, owned, touched, batch[-1].offset() or 0)
        processed = len(batch)
        COMMANDS.labels(str(partition)).inc(processed)
        self.throughput.staged(processed)
        owned.since_snapshot += processed
        owned.since_hash += processed
        crash_point("after-produce")
        if owned.pending is not None:
            try:
                ready = owned.pending.poll()
            except RuntimeError as error:
                log.warning("background snapshot failed; another follows", partition=partition, error=str(error))
                owned.pending, ready = None, None
            if ready is not None:
                owned.pending = None
                self._produce_snapshot(producer, ready)
                crash_point("during-snapshot")
        if owned.pending is None:
            # One child at a time per partition; a snapshot carries hashes too, so it resets both.
            if owned.since_snapshot >= self.config.snapshot_every:
                owned.pending = BackgroundSnapshot(state, self.codec)
                owned.since_snapshot = owned.since_hash = 0
            elif owned.since_hash >= self.config.hash_every:
                owned.pending = BackgroundSnapshot(state, self.codec, hashes_only=True)
                owned.since_hash = 0
        return oldest_ts

    def _commit(self, producer: Producer) -> None:
        for attempt in range(5):
            try:
                producer.commit_transaction(self.config.commit_timeout_s)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or error.txn_requires_abort() or error.fatal() or attempt == 4:
                    raise
                log.warning("commit retry", error=error.str(), attempt=attempt + 1)

    def _publish_book(self, producer: Producer, partition: int, owned: _Owned, markets: set[str],
                      last_offset: int) -> None:
        """One md.book delta per market per batch: the levels the batch changed, chained by seq.

        ``book_seq`` is the engine seq the delta brings the book up to and ``prev_book_seq`` the one
        of the market's previous delta, so a consumer detects a lost delta. A full snapshot of the
        book (``snapshot=true``) is published instead of the delta as a market's first record after
        recovery (``prev_book_seq`` 0: nothing before it is known to chain), and after every
        ``book_snapshot_every`` deltas of the market (``prev_book_seq`` the previous delta's, so the
        chain stays unbroken): counted per market, never timed, so the same batches publish the
        same records."""
        every = self.config.book_snapshot_every
        for market in sorted(markets):
            engine = owned.state.engines[market]
            prev = owned.book_seq.get(market)
            deltas = owned.book_deltas.get(market, 0)
            if prev is None or deltas >= every:
                engine.take_book_changes()
                changes = [(side, price, qty) for side in (Side.BUY, Side.SELL)
                           for price, qty in engine.book_levels(side)]
                snapshot = True
                owned.book_deltas[market] = 0
            else:
                changes = engine.take_book_changes()
                snapshot = False
                owned.book_deltas[market] = deltas + 1
            owned.book_seq[market] = engine.seq
            for record in book_records(market, engine.seq, prev or 0, snapshot, engine.last_ts, partition,
                                       last_offset, changes):
                try:
                    value = self.codec.encode(MD_BOOK, record)
                except EncodeError as error:
                    raise OutputRefused(f"partition {partition}: the md.book delta of {market} up to the command "
                                        f"at offset {last_offset} cannot be encoded: {error}") from None
                self._produce(producer, MD_BOOK, market.encode(), value)

    def _produce_snapshot(self, producer: Producer, records: SnapshotRecords) -> None:
        """The snapshot (if any: a hash checkpoint has none) to ``engine.snapshots`` and its
        hashes to ``engine.hashes``, both in the input partition's own partition, inside the open
        transaction."""
        partition = records.partition
        if records.snapshot is not None:
            owned = self.owned.get(partition)
            if owned is not None:
                owned.snapshot_offset = records.next_offset
            self._produce(producer, ENGINE_SNAPSHOTS, str(partition).encode(), records.snapshot, partition=partition)
        for key, value in records.hashes:
            self._produce(producer, ENGINE_HASHES, key, value, partition=partition)

    def _produce(self, producer: Producer, topic: str, key: bytes | None, value: bytes,
                 partition: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                producer.produce(self.ns(topic), value, key, **kwargs)
                return
            except BufferError:
                producer.poll(0.05)

