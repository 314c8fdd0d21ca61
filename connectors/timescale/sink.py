"""The exactly-once analytics sink: Kafka output topics → PostgreSQL/TimescaleDB (``xchg sink timescale``).

This module is the loop (consume a batch, prepare it, hand it to the writer thread, retry through
database outages behind the circuit breaker). The rest of the sink:

- ``tables.py``: each table the sink writes as one value (columns and their types) and the row of
  each table built from a decoded record;
- ``records.py``: the pure decisions about one record or row (duplicate or conflict, the candle
  fold, the L2 book fold);
- ``batch.py``: the pure core, consumed records → a ``Batch`` of rows, candidates, anomalies,
  rejections and offsets (``Preparer``: the sequence trackers and books between batches);
- ``writer.py``: one ``Batch`` into the database in one transaction (COPY → fallbacks → dead
  letters → offsets);
- ``circuit.py``: the database circuit as a state machine; ``errors.py``: what stops the sink and
  what is retried.

Exactly once, by construction:

- Input: ``trades``, ``orders.events``, ``md.candles`` and ``md.book`` of the namespace, read with
  ``isolation.level=read_committed`` by a consumer with *manual* assignment (no consumer group: the
  database, not Kafka, owns the positions). One sink instance per ``sink_name``, enforced: the
  sink writes only on a connection holding its advisory locks (``lease.py``), so a second
  instance of the name, or a sink during ``xchg db rebuild``, is refused with one line.
- Each batch is written in ONE database transaction together with the next offset of every
  partition it consumed (table ``kafka_offsets``). On start the sink seeks to the offsets stored
  in the database, so a crash anywhere (before, during or after the commit) neither loses nor
  repeats a row.
- One database, one stream (``binding.py``): stored offsets are positions in particular topics,
  and the tables' keys ((market, trade_id), (market, seq) ...) are unique only within one stream.
  So the database records the Kafka cluster id, the namespace and the topic ids it holds
  (``stream_binding``), and the sink refuses, at start and with one line, a database bound to
  another stream (a second namespace, a second cluster, a recreated topic) or holding rows of an
  unknown one. We refuse rather than keep streams apart with a stream column in every key,
  because analysts' views and the gap-free ids per market assume one stream per database.
- Second guard, per record: a per-market ``SequenceTracker`` (``trade_id`` for trades, ``seq``
  for events, resumed from the highest stored value) classifies every record. In sequence: copied
  straight into the table (fast path). A gap: written, reported. A value already seen: *not*
  skipped on the tracker's word; it is looked up in the table inside the write transaction, and
  it is a duplicate (skipped, reported) only when the stored row came from a byte-identical
  record (``record_digest``, a BLAKE2b digest of the Kafka value is stored with each row). No
  stored row: written (a late record). Different bytes: ``RecordConflict``, the batch is rolled
  back and the sink stops (``records.classify``). A batch whose fast COPY hits an existing key goes
  through the same comparison. Candles are upserted by (market, interval, window_start), never
  going back to an older state (``last_trade_id`` only grows; ``final`` sticks); an update of the
  same version with other values, or an L2 snapshot row that differs from the stored one, is a
  conflict too.
- Input anomalies (gaps, byte-identical duplicates, md.book chain breaks) are logged, counted
  (``xchg_sink_anomalies_total``) and stored in ``sink_anomalies``.
- A record that cannot be decoded, or that the database rejects (a constraint or a value out of
  range), goes to ``dlq.sink`` with the reason in its headers instead of blocking the stream
  (found by retrying the failed batch row by row under savepoints). The DLQ producer is flushed
  before the database commit (at least once on the DLQ side); a dead-letter topic that does not
  acknowledge fails the batch with ``DeadLetterUnacknowledged``, retried like a database outage.
- A consumer error that no retry cures (fenced, fatal, not authorised: ``raise_if_fatal``) stops
  the sink with ``ClientFatal``; the others are logged.

Database failure (connection lost, server shut down, statement timeout): the sink stops consuming,
opens its circuit (``xchg_sink_circuit_state`` = 1, a log line), retries the same batch with capped
exponential backoff (stamina; each attempt is half-open = 2) on a new connection, and closes the
circuit only once a statement got an answer from the database (``circuit.py``). A commit whose
outcome is unknown (the connection died during COMMIT) is resolved on reconnect by reading the
stored offsets: if they already cover the batch, the batch is not written again. The new
connection takes the sink's locks back only if nobody held them meanwhile (``SinkFenced``
otherwise: a rebuild may have reset the positions this process holds in memory).

Throughput: a writer thread commits batch N (COPY + offsets) while the main thread consumes and
decodes batch N+1; batches still commit one at a time, in consumption order. In-sequence trades take
a fast path. On this 2-core machine the bottleneck is per-record Avro decoding in Python
(``xchg bench sink`` compares with raw COPY of pre-built rows).

L2 snapshots: the sink keeps each market's aggregated book from ``md.book`` and writes a snapshot
row whenever a delta's event time enters a new ``book_snapshot_interval_s`` bucket, from a book
known to be complete (``records.apply_book``); the book itself is stored with the offsets
(``sink_book_state``) so a restart resumes it exactly.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
import stamina
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from psycopg import sql

from connectors.timescale import binding
from connectors.timescale.batch import Batch, Preparer
from connectors.timescale.circuit import CLOSED, HALF_OPEN, OPEN, Circuit, Transition
from connectors.timescale.errors import (
    TRANSIENT,
    SinkError,
    SinkStopping,
    StreamMismatch,
    is_data_error,
    is_transient,
)
from connectors.timescale.lease import SinkLease
from connectors.timescale.records import Book
from connectors.timescale.tables import Journal
from connectors.timescale.writer import BatchWriter, DeadLetterTopic, Written
from streams.observability import SINK_ANOMALIES, SINK_CIRCUIT, SINK_ROWS, get_logger
from streams.runtime.clients import consumer_config, raise_if_fatal
from streams.runtime.namespace import Namespace
from streams.runtime.reader import topic_partitions
from streams.serde.codec import Codec
from streams.serde.topics import DLQ_SINK, MD_BOOK, MD_CANDLES, ORDERS_EVENTS, TRADES
from streams.settings import Settings

__all__ = ["INPUT_TOPICS", "SinkConfig", "SinkStats", "TimescaleSink", "is_data_error", "is_transient", "market_rows"]

INPUT_TOPICS = (TRADES, ORDERS_EVENTS, MD_CANDLES, MD_BOOK)
CIRCUIT_CLOSED, CIRCUIT_OPEN, CIRCUIT_HALF_OPEN = CLOSED, OPEN, HALF_OPEN


@dataclass(frozen=True)
class SinkConfig:
    bootstrap: str
    dsn: str
    namespace: Namespace = field(default_factory=Namespace)
    name: str = "xchg-sink"
    batch_size: int = 20_000
    linger_ms: int = 200
    book_snapshot_interval_s: int = 60
    retention_days: int = 90
    until_caught_up: bool = False
    idle_exit_s: float | None = None
    max_runtime_s: float | None = None
    statement_timeout_ms: int = 10_000
    retry_wait_max_s: float = 2.0
    schema_registry_url: str | None = None
    # rebuild --since: records with an earlier event time are re-read on purpose; found stored
    # (byte-identical) they are not input anomalies, found missing they are written.
    rebuild_since_ms: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SinkConfig:
        """The sink of this process's settings (the one place that maps them), with ``overrides``
        for what a command decides itself (``until_caught_up``, ``idle_exit_s``, ...)."""
        values: dict[str, Any] = {
            "bootstrap": settings.bootstrap_servers, "dsn": settings.writer_dsn(),
            "namespace": settings.namespace, "name": settings.sink_identity,
            "batch_size": settings.sink_batch_size, "linger_ms": settings.sink_linger_ms,
            "book_snapshot_interval_s": settings.book_snapshot_interval_s,
            "retention_days": settings.retention_days, "schema_registry_url": settings.schema_registry_url,
        }
        return cls(**{**values, **overrides})


@dataclass
class SinkStats:
    batches: int = 0
    records: int = 0
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    duplicates: int = 0  # byte-identical repeats in the input (reported as anomalies)
    already_stored: int = 0  # re-read records found stored byte for byte (a rebuild --since, a second writer)
    late: int = 0  # records with an already-seen sequence value that were not stored: written
    gaps: int = 0
    dead_letters: int = 0
    db_failures: int = 0
    outage_seconds: list[float] = field(default_factory=list)


class TimescaleSink:
    """The loop: consume a batch, prepare it (``batch.Preparer``, on the main thread), hand it to the
    writer thread (``writer.BatchWriter``), all database work through ``_with_db`` (the circuit
    breaker and the retries). Rows, duplicates and dead letters are counted in ``stats`` once their
    batch is committed; gaps once prepared."""

    def __init__(self, config: SinkConfig, codec: Codec | None = None,
                 markets: Iterable[tuple[str, str, str, int, int, str, str]] = (),
                 lease: SinkLease | None = None) -> None:
        self.config = config
        self.codec = codec or Codec(schema_registry_url=config.schema_registry_url)
        self.markets = list(markets)
        self.log = get_logger("sink").bind(sink=config.name)
        self.stats = SinkStats()
        self.ns = config.namespace
        # The writer thread writes through the lease's connection (it holds the sink's locks);
        # "read" is the main thread's connection for the sequence look-ups.
        self.lease = lease or SinkLease(config.dsn, config.name, "sink", statement_timeout_ms=config.statement_timeout_ms)
        self.owns_lease = lease is None
        self.conns: dict[str, psycopg.Connection[Any]] = {}
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-writer")
        self.pending: tuple[Future[Written], Batch, int] | None = None
        self.preparer = Preparer(self.codec, self.ns, config.name, config.book_snapshot_interval_s,
                                 config.rebuild_since_ms)
        self.dead_letters = DeadLetterTopic(config.bootstrap, self.ns(DLQ_SINK), config.name)
        self.batch_writer = BatchWriter(config.name, config.retention_days, self.dead_letters)
        self.stopping = False
        self.partitions: list[TopicPartition] = []
        self.position: dict[tuple[str, int], int] = {}
        self.circuit = Circuit()
        self.outage_started: float | None = None
        self.consumer: Consumer | None = None
        self.probe: Consumer | None = None
        SINK_CIRCUIT.set(CIRCUIT_CLOSED)

    # -- database -------------------------------------------------------------------------------
    def _connect(self, slot: str) -> psycopg.Connection[Any]:
        if slot == "write":
            return self.lease.connection()
        conn = self.conns.get(slot)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._disconnect(slot)
        conn = psycopg.connect(
            self.config.dsn, autocommit=True, connect_timeout=3, keepalives=1, keepalives_idle=5, keepalives_interval=2,
            keepalives_count=2, options=f"-c statement_timeout={self.config.statement_timeout_ms}")
        self.conns[slot] = conn
        return conn

    def _disconnect(self, slot: str) -> None:
        if slot == "write":
            self.lease.drop()
            return
        conn = self.conns.pop(slot, None)
        if conn is not None:
            conn.close()

    def _with_db(self, what: str, action: Any, slot: str = "read") -> Any:
        """Run ``action(conn)`` with retries on connection failures; tracks the circuit state."""
        round_trip = False
        for attempt in stamina.retry_context(on=is_transient, attempts=None, timeout=None, wait_initial=0.1,
                                             wait_max=self.config.retry_wait_max_s, wait_jitter=0.1):
            with attempt:
                if attempt.num > 1:
                    if self.stopping:  # a stop during an outage: give up the retries (at most ~2 s away)
                        raise SinkStopping(f"stopped while retrying {what} during a database outage")
                    self._transition(self.circuit.retrying(), what)
                try:
                    conn = self._connect(slot)
                    # While the circuit is not closed, ask the database first: only its answer
                    # may close the circuit (a cached connection can "succeed" without I/O).
                    round_trip = self.circuit.state != CIRCUIT_CLOSED
                    if round_trip:
                        conn.execute("select 1")
                    result = action(conn)
                except TRANSIENT as error:
                    if not is_transient(error):
                        raise
                    self.stats.db_failures += 1
                    self._disconnect(slot)
                    self._transition(self.circuit.failure(), what,
                                     str(error).strip().splitlines()[0] if str(error) else "")
                    raise
        self._transition(self.circuit.success(round_trip), what)
        return result

    def _transition(self, change: Transition | None, what: str, error: str = "") -> None:
        if change is None:
            return
        SINK_CIRCUIT.set(change.state)
        if change.state == CIRCUIT_OPEN and change.previous == CIRCUIT_CLOSED:
            self.outage_started = time.monotonic()
            self.log.warning("database circuit open: consuming stopped, retrying", operation=what, error=error)
        elif change.state == CIRCUIT_OPEN:
            self.log.info("database still unavailable", operation=what, error=error)
        elif change.state == CIRCUIT_HALF_OPEN:
            self.log.info("database circuit half-open: retrying", operation=what)
        else:
            outage = time.monotonic() - (self.outage_started or time.monotonic())
            self.stats.outage_seconds.append(outage)
            self.log.warning("database circuit closed: resumed", operation=what, outage_s=round(outage, 3))

    def _load_state(self, conn: psycopg.Connection[Any],
                    identities: dict[str, binding.TopicIdentity]) -> dict[tuple[str, int], int]:
        verdict = binding.check(conn, identities, self.config.name)
        if verdict.action == "refuse":
            raise StreamMismatch(f"sink {self.config.name}: {verdict.reason}")
        if verdict.action == "bind":
            self.log.info("database bound to this stream", namespace=self.ns.prefix,
                          cluster=next(iter(identities.values())).cluster_id)
        with conn.transaction():
            if self.markets:
                with conn.cursor() as cur:
                    cur.executemany(
                        "insert into markets (symbol, base, quote, price_decimals, qty_decimals, tick_size, lot_size)"
                        " values (%s, %s, %s, %s, %s, %s, %s) on conflict (symbol) do update set"
                        " base = excluded.base, quote = excluded.quote, price_decimals = excluded.price_decimals,"
                        " qty_decimals = excluded.qty_decimals, tick_size = excluded.tick_size,"
                        " lot_size = excluded.lot_size", self.markets)
            rows = conn.execute("select topic, partition, next_offset from kafka_offsets where consumer = %s",
                                (self.config.name,)).fetchall()
            books = conn.execute("select market, book_seq, last_snapshot_bucket, bids, asks, pending_part"
                                 " from sink_book_state where consumer = %s", (self.config.name,)).fetchall()
        # Only books known to be complete are stored, so a stored book is synced.
        self.preparer.restore({m: Book(seq, bucket, {int(p): q for p, q in bids}, {int(p): q for p, q in asks},
                                       synced=True, pending=pending)
                               for m, seq, bucket, bids, asks, pending in books})
        self.batch_writer.maintain_partitions(conn, force=True)
        return {(t, p): o for t, p, o in rows}

    def _stored_last(self, conn: psycopg.Connection[Any], journal: Journal, markets: list[str]) -> Mapping[str, int]:
        """The highest stored counter of each of ``markets`` that has rows in ``journal``."""
        query = sql.SQL("select market, max({}) from {} where market = any(%s) group by market").format(
            sql.Identifier(journal.key), sql.Identifier(journal.name))
        return {market: int(last) for market, last in conn.execute(query, (markets,)).fetchall()}

    # -- Kafka ----------------------------------------------------------------------------------
    def _assign(self, stored: dict[tuple[str, int], int]) -> None:
        assert self.consumer is not None
        partitions: list[TopicPartition] = []
        for logical in INPUT_TOPICS:
            physical = self.ns(logical)
            topic_parts = topic_partitions(self.consumer, physical)
            if not topic_parts:
                raise SinkError(f"topic {physical} does not exist (run `xchg topics apply`)")
            for p in topic_parts:
                partitions.append(TopicPartition(physical, p, stored.get((physical, p), OFFSET_BEGINNING)))
        self.partitions = partitions
        self.position = {(tp.topic, tp.partition): tp.offset for tp in partitions}
        self.consumer.assign(partitions)
        self.log.info("assigned", partitions=len(partitions),
                      stored=sum(1 for tp in partitions if tp.offset != OFFSET_BEGINNING))

    def caught_up(self) -> bool:
        """Whether every assigned partition is consumed (and written) up to its end."""
        assert self.consumer is not None
        self._drain()
        positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(self.partitions)}
        for tp in self.partitions:
            key = (tp.topic, tp.partition)
            low, high = self._probe().get_watermark_offsets(tp, timeout=10, cached=False)
            pos = max(positions.get(key, -1), self.position.get(key, -1))
            if pos < 0:
                pos = low
            if pos < high:
                return False
        return True

    def _probe(self) -> Consumer:
        """A consumer with no assignment for watermark queries (the assigned one answers them only
        between its fetch waits)."""
        if self.probe is None:
            self.probe = Consumer(consumer_config(self.config.bootstrap, f"{self.config.name}-probe"))
        return self.probe

    # -- main loop ------------------------------------------------------------------------------
    def start(self) -> None:
        """Check the stream against the database (under the sink's locks), then assign."""
        identities = binding.kafka_identities(self.config.bootstrap, self.ns, INPUT_TOPICS)
        stored = self._with_db("load_state", lambda conn: self._load_state(conn, identities), slot="write")
        self.consumer = Consumer(consumer_config(
            self.config.bootstrap, f"{self.config.name}-reader", **{
                "fetch.max.bytes": 104857600, "max.partition.fetch.bytes": 16777216,
                "queued.max.messages.kbytes": 262144}))
        self._assign(stored)

    def step(self) -> int:
        """Consume one batch and write it (retrying through database outages); returns records consumed."""
        assert self.consumer is not None
        messages: list[Message] = []
        deadline = time.monotonic() + self.config.linger_ms / 1000
        while len(messages) < self.config.batch_size:
            wait = max(0.0, deadline - time.monotonic())
            got = self.consumer.consume(num_messages=min(10_000, self.config.batch_size - len(messages)),
                                        timeout=min(wait, 0.1) if messages else max(wait, 0.05))
            for m in got:
                error = m.error()
                if error is not None:
                    raise_if_fatal(error)  # fenced, fatal, not authorised: ClientFatal, the sink stops
                    self.log.warning("consumer error", error=str(error))
                    continue
                messages.append(m)
            if not got and (messages or time.monotonic() >= deadline):
                break
            if time.monotonic() >= deadline:
                break
        if not messages:
            return 0
        # Preparing decodes and checks sequences (reading the stored maximum sequence numbers of
        # markets seen for the first time); it overlaps with the writer thread's previous batch.
        batch: Batch = self._with_db("prepare", lambda conn: self.preparer.prepare(
            messages, lambda journal, markets: self._stored_last(conn, journal, markets)))
        self._report(batch)
        self._drain()  # batches commit one after the other, in consumption order
        self.pending = (self.writer.submit(self._write_retrying, batch), batch, len(messages))
        return len(messages)

    def _report(self, batch: Batch) -> None:
        """Count and log a prepared batch's gaps and book chain breaks (duplicates are known only
        once written)."""
        for anomaly in batch.anomalies:
            SINK_ANOMALIES.labels(anomaly.topic, anomaly.kind).inc()
            if anomaly.kind == "gap":
                self.stats.gaps += 1
                self.log.error("sequence gap", topic=anomaly.topic, market=anomaly.market, expected=anomaly.expected,
                               got=anomaly.got)

    def _write_retrying(self, batch: Batch) -> Written:
        attempts = [0]

        def write(conn: psycopg.Connection[Any]) -> Written:
            attempts[0] += 1
            return self.batch_writer.write(conn, batch, retry=attempts[0] > 1)

        return self._with_db("write_batch", write, slot="write")  # type: ignore[no-any-return]

    def _drain(self) -> None:
        """Wait for the batch being written; account for it (raises what the writer raised)."""
        if self.pending is None:
            return
        future, batch, count = self.pending
        self.pending = None
        done = future.result()
        for table, n in done.rows.items():
            SINK_ROWS.labels(table).inc(n)
            self.stats.rows[table] += n
        for topic, n in done.duplicates.items():
            SINK_ANOMALIES.labels(topic, "duplicate").inc(n)
            self.stats.duplicates += n
        self.stats.already_stored += done.already_stored
        self.stats.late += done.late
        self.stats.dead_letters += done.dead_letters
        self.stats.batches += 1
        self.stats.records += count
        for (t, p), o in batch.offsets.items():
            self.position[(t, p)] = o

    def run(self, on_batch: Callable[[int], Any] | None = None) -> SinkStats:
        """Consume and write until a stop condition of the config (or forever); ``on_batch`` gets
        the number of records of each written batch."""
        self.stopping = False
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._stop_signal)
        try:
            self._run_steps(on_batch)
        except SinkStopping as stop:
            # Nothing is lost: the offsets are stored with the rows, and a restart resumes there.
            self.log.warning("stopped before the database came back; a restart resumes from it", detail=str(stop))
        return self.stats

    def _run_steps(self, on_batch: Callable[[int], Any] | None) -> None:
        try:
            self.start()
            started = last_input = time.monotonic()
            last_report = started
            while not self.stopping:
                n = self.step()
                if n and on_batch is not None:
                    on_batch(n)
                now = time.monotonic()
                if n:
                    last_input = now
                if now - last_report >= 5:
                    last_report = now
                    self.log.info("progress", records=self.stats.records, rows=dict(self.stats.rows),
                                  duplicates=self.stats.duplicates, gaps=self.stats.gaps)
                if self.config.max_runtime_s is not None and now - started >= self.config.max_runtime_s:
                    break
                if self.config.idle_exit_s is not None and now - last_input >= self.config.idle_exit_s:
                    break
                if self.config.until_caught_up and not n and self.caught_up():
                    self.log.info("caught up", records=self.stats.records, rows=dict(self.stats.rows))
                    break
        finally:
            self.close()

    def _stop_signal(self, signum: int, frame: object) -> None:
        self.log.info("stopping", signal=signal.Signals(signum).name)
        self.stopping = True

    def close(self) -> None:
        try:
            if self.pending is not None:
                self._drain()
        finally:
            self.writer.shutdown(wait=True)
            self._close_clients()

    def _close_clients(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        self.dead_letters.close()
        for slot in list(self.conns):
            self._disconnect(slot)
        if self.owns_lease:
            self.lease.release()


def market_rows(path: Any) -> list[tuple[str, str, str, int, int, str, str]]:
    """Rows of the ``markets`` table from the market registry file."""
    from streams.markets import MarketRegistry

    return [(m.symbol, m.base, m.quote, m.price_decimals, m.qty_decimals, str(m.tick_size), str(m.lot_size))
            for m in MarketRegistry.load(path)]
