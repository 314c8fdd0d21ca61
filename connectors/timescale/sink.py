"""The exactly-once analytics sink: Kafka output topics → PostgreSQL/TimescaleDB (``xchg sink timescale``).

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
  before the database commit (at least once on the DLQ side).
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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from hashlib import blake2b
from typing import Any

import psycopg
import stamina
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from psycopg import sql
from psycopg.types.json import Jsonb

from connectors.timescale import binding
from connectors.timescale.circuit import CLOSED, HALF_OPEN, OPEN, Circuit, Transition
from connectors.timescale.errors import RecordConflict, SinkError, SinkStopping, StreamMismatch
from connectors.timescale.lease import SinkLease
from connectors.timescale.records import (
    DIGEST_SIZE,
    Book,
    Candidate,
    Stored,
    apply_book,
    candle_conflict,
    candle_fold,
    classify,
    comparable,
    json_dumps,
)
from streams.observability import DB_QUERY_SECONDS, SINK_ANOMALIES, SINK_CIRCUIT, SINK_ROWS, get_logger
from streams.runtime.clients import consumer_config, producer_config, raise_if_fatal
from streams.runtime.namespace import Namespace
from streams.runtime.reader import topic_partitions
from streams.runtime.sequence import SequenceTracker, Verdict
from streams.serde.codec import Codec, DecodeError
from streams.serde.topics import DLQ_SINK, MD_BOOK, MD_CANDLES, ORDERS_EVENTS, TRADES

INPUT_TOPICS = (TRADES, ORDERS_EVENTS, MD_CANDLES, MD_BOOK)
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError)
# SQLSTATE classes of a value the database refuses whatever the retry: 22 data exception, 23
# integrity constraint, 54 program limit exceeded (e.g. an index row too large). Class 54 is a
# psycopg OperationalError, which otherwise reads as an outage: such a row was retried for ever.
# Data failures go to the dead letters row by row; only the rest of TRANSIENT is an outage.
DATA_SQLSTATE_CLASSES = ("22", "23", "54")
DATA_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError, psycopg.errors.ProgramLimitExceeded)


def is_data_error(error: BaseException) -> bool:
    """True for an error about a value, which no retry cures (``DATA_SQLSTATE_CLASSES``)."""
    return isinstance(error, psycopg.Error) and (error.sqlstate or "")[:2] in DATA_SQLSTATE_CLASSES


def is_transient(error: BaseException) -> bool:
    """True for a connection or server failure that a retry after a pause may cure."""
    return isinstance(error, TRANSIENT) and not is_data_error(error)

CIRCUIT_CLOSED, CIRCUIT_OPEN, CIRCUIT_HALF_OPEN = CLOSED, OPEN, HALF_OPEN

TRADE_COLUMNS = ("market", "trade_id", "ts", "seq", "price", "qty", "maker_order_id", "maker_account",
                 "taker_order_id", "taker_account", "taker_side")
TRADE_TYPES = ("text", "int8", "timestamptz", "int8", "int8", "int8", "text", "text", "text", "text", "text")
EVENT_COLUMNS = ("market", "seq", "ts", "command_id", "event_type", "order_id", "account", "payload")
EVENT_TYPES = ("text", "int8", "timestamptz", "text", "text", "text", "text", "jsonb")
CANDLE_COLUMNS = ("market", "interval", "window_start", "open", "high", "low", "close", "volume", "quote_volume",
                  "trade_count", "first_trade_id", "last_trade_id", "final")
CANDLE_TYPES = ("text", "text", "timestamptz", "int8", "int8", "int8", "int8", "int8", "numeric", "int8", "int8",
                "int8", "bool")
SNAPSHOT_COLUMNS = ("market", "ts", "book_seq", "bids", "asks")
SNAPSHOT_TYPES = ("text", "timestamptz", "int8", "jsonb", "jsonb")


@dataclass(frozen=True)
class Journal:
    """A table of a gap-free per-market stream (trades, order events): its rows are the columns
    plus the digest of the record they came from; ``key`` names the per-market counter."""

    topic: str
    table: str
    key: str
    columns: tuple[str, ...]
    types: tuple[str, ...]

    @property
    def write_columns(self) -> tuple[str, ...]:
        return (*self.columns, "record_digest")

    @property
    def write_types(self) -> tuple[str, ...]:
        return (*self.types, "bytea")


TRADES_TABLE = Journal(TRADES, "trades", "trade_id", TRADE_COLUMNS, TRADE_TYPES)
EVENTS_TABLE = Journal(ORDERS_EVENTS, "order_events", "seq", EVENT_COLUMNS, EVENT_TYPES)

CANDLE_UPSERT = (
    "on conflict (market, interval, window_start) do update set open = excluded.open,"
    " high = excluded.high, low = excluded.low, close = excluded.close, volume = excluded.volume,"
    " quote_volume = excluded.quote_volume, trade_count = excluded.trade_count,"
    " first_trade_id = excluded.first_trade_id, last_trade_id = excluded.last_trade_id,"
    " final = candles.final or excluded.final, updated_at = now()"
    " where candles.last_trade_id < excluded.last_trade_id"
    " or (candles.last_trade_id = excluded.last_trade_id and excluded.final and not candles.final)")
# After the upsert: a staged update of the same version as the stored state but other values.
CANDLE_CHECK = (
    "select s.market, s.interval, s.window_start, s.last_trade_id from {stage} s join candles c"
    " using (market, interval, window_start) where c.last_trade_id = s.last_trade_id and c.final = s.final"
    " and (c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trade_count, c.first_trade_id)"
    " is distinct from (s.open, s.high, s.low, s.close, s.volume, s.quote_volume, s.trade_count, s.first_trade_id)"
    " limit 1")
SNAPSHOT_CHECK = (
    "select s.market, s.book_seq, s.ts from {stage} s join book_snapshots b using (market, book_seq, ts)"
    " where b.bids <> s.bids or b.asks <> s.asks limit 1")


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


@dataclass
class _Rejected:
    message: Message
    reason: str
    detail: str


@dataclass
class _Batch:
    """Rows prepared from consumed records, with the offsets they advance."""

    trades: list[tuple[Any, ...]] = field(default_factory=list)  # rows + digest
    trade_src: list[Message] = field(default_factory=list)
    trade_candidates: list[Candidate] = field(default_factory=list)  # sequence values already seen
    events: list[tuple[Any, ...]] = field(default_factory=list)
    event_src: list[Message] = field(default_factory=list)
    event_candidates: list[Candidate] = field(default_factory=list)
    candles: dict[tuple[str, str, int], tuple[Any, ...]] = field(default_factory=dict)
    candle_src: dict[tuple[str, str, int], Message] = field(default_factory=dict)
    snapshots: list[tuple[Any, ...]] = field(default_factory=list)
    books: set[str] = field(default_factory=set)
    book_rows: list[tuple[Any, ...]] = field(default_factory=list)
    anomalies: list[tuple[Any, ...]] = field(default_factory=list)
    rejected: list[_Rejected] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # physical topic, partition → next
    records: int = 0


@dataclass
class _Written:
    """What one committed batch did (counted once, after its commit)."""

    rows: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)  # topic → byte-identical repeats
    already_stored: int = 0
    late: int = 0


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(ms: int) -> datetime:
    """Milliseconds since the epoch as an aware UTC datetime (exact; faster than fromtimestamp)."""
    return _EPOCH + timedelta(0, 0, 0, ms)


def event_row(v: dict[str, Any]) -> tuple[Any, ...]:
    """The ``order_events`` row (``EVENT_COLUMNS``) of a decoded ``orders.events`` value."""
    name, body = v["body"]
    return (v["market"], v["seq"], _ts(v["ts"]), v["command_id"], name.rsplit(".", 1)[-1], body.get("order_id"),
            body.get("account"), Jsonb(body, dumps=json_dumps))


def candle_row(v: dict[str, Any]) -> tuple[Any, ...]:
    """The ``candles`` row (``CANDLE_COLUMNS``) of a decoded ``md.candles`` value."""
    return (v["market"], v["interval"], _ts(v["window_start"]), v["open"], v["high"], v["low"], v["close"],
            v["volume"], v["quote_volume"], v["trade_count"], v["first_trade_id"], v["last_trade_id"], v["final"])


def _where(message: Message) -> str:
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"


def _conflict(journal: Journal, candidate: Candidate, stored: Stored) -> RecordConflict:
    market, value = candidate.key
    source = f" at {_where(candidate.source)}" if candidate.source is not None else ""
    was = f"digest {stored.digest.hex()}" if stored.digest is not None else f"values {stored.values}"
    return RecordConflict(
        f"{journal.topic} record {market} {journal.key} {value}{source} has the key of a stored row with other "
        f"values (stored {was}, record digest {candidate.digest.hex()}): not a duplicate, so it is not skipped; "
        "the sink stops without writing its batch. Does the database hold another stream's rows? "
        "(`xchg db rebuild --yes` rebuilds it from the topics)")


def _collision(table: str, error: psycopg.Error) -> RecordConflict:
    """A key collision after every key was looked up under the table lock: a writer outside the
    sink's locks, not a fault of the row, so the sink stops rather than dead-letters it."""
    detail = (error.diag.message_detail or error.diag.message_primary or str(error)).strip().splitlines()[0]
    return RecordConflict(f"{table}: a row was stored by another writer while the sink held the table ({detail}); "
                          "the sink stops without writing its batch")


class TimescaleSink:
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
        self.pending: tuple[Future[_Written], _Batch, int] | None = None
        self.logical: dict[str, str] = {}
        self.read_trade = self.codec.row_reader(TRADES, TRADE_COLUMNS, {"ts": _ts})
        self.rebuild_since = _ts(config.rebuild_since_ms) if config.rebuild_since_ms is not None else None
        self.stopping = False
        self.trade_seq = SequenceTracker()
        self.event_seq = SequenceTracker()
        self.known_trade_markets: set[str] = set()
        self.known_event_markets: set[str] = set()
        self.books: dict[str, Book] = {}
        self.partitions: list[TopicPartition] = []
        self.position: dict[tuple[str, int], int] = {}
        self.circuit = Circuit()
        self.outage_started: float | None = None
        self.partition_day: date | None = None
        self.consumer: Consumer | None = None
        self.dlq: Producer | None = None
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
        self.books = {m: Book(seq, bucket, {int(p): q for p, q in bids}, {int(p): q for p, q in asks}, synced=True,
                              pending=pending)
                      for m, seq, bucket, bids, asks, pending in books}
        self.trade_seq, self.event_seq = SequenceTracker(), SequenceTracker()
        self.known_trade_markets.clear()
        self.known_event_markets.clear()
        self._maintain_partitions(conn, force=True)
        return {(t, p): o for t, p, o in rows}

    def _maintain_partitions(self, conn: psycopg.Connection[Any], force: bool = False) -> None:
        """Plain path: daily partitions a week ahead, and retention by dropping old ones."""
        today = datetime.now(UTC).date()
        if not force and self.partition_day == today:
            return
        self.partition_day = today
        plain = conn.execute("select 1 from pg_partitioned_table p join pg_class c on c.oid = p.partrelid"
                             " where c.relname = 'trades'").fetchone()
        if not plain:
            return
        cutoff = today - timedelta(days=self.config.retention_days)
        for table in ("trades", "order_events", "book_snapshots"):
            try:
                with conn.transaction():
                    conn.execute("select ensure_daily_partitions(%s, %s, 9)", (table, today - timedelta(days=1)))
                    conn.execute("select drop_partitions_before(%s, %s)", (table, cutoff))
            except psycopg.errors.DatabaseError as error:
                if is_transient(error):
                    raise
                self.log.warning("partition maintenance failed", table=table, error=str(error).strip())

    def _resume_sequence(self, conn: psycopg.Connection[Any], batch_markets: set[str], events: bool) -> None:
        known = self.known_event_markets if events else self.known_trade_markets
        todo = sorted(batch_markets - known)
        if not todo:
            return
        tracker = self.event_seq if events else self.trade_seq
        query = ("select market, max(seq) from order_events where market = any(%s) group by market" if events
                 else "select market, max(trade_id) from trades where market = any(%s) group by market")
        for market, last in conn.execute(query, (todo,)).fetchall():
            tracker.resume(market, int(last))
        known.update(todo)

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

    # -- preparing rows -------------------------------------------------------------------------
    def _prepare(self, messages: Sequence[Message], conn: psycopg.Connection[Any]) -> _Batch:
        batch = _Batch()
        decoded: list[tuple[str, Message, Any]] = []  # a dict, or a finished row for TRADES
        # One pass: offsets, decoding, the markets whose stored sequence must be known first.
        offsets, logical_of, decode, rejected = batch.offsets, self.logical, self.codec.decode, batch.rejected
        read_trade = self.read_trade
        trade_markets: set[str] = set()
        event_markets: set[str] = set()
        for message in messages:
            topic: str = message.topic()  # type: ignore[assignment]  # never None for a consumed record
            offsets[(topic, message.partition())] = message.offset() + 1  # type: ignore[index,operator]
            logical = logical_of.get(topic)
            if logical is None:
                logical = logical_of[topic] = self.ns.logical(topic)
            try:
                if logical == TRADES:
                    row = read_trade(message.value())  # the table row itself: no dict per trade
                    decoded.append((TRADES, message, row))
                    trade_markets.add(row[0])
                    continue
                value = decode(logical, message.value())
            except DecodeError as error:
                rejected.append(_Rejected(message, f"undecodable:{error.reason}", str(error)))
                continue
            except (ValueError, OverflowError) as error:  # a trade time no timestamp holds
                rejected.append(_Rejected(message, f"invalid:{type(error).__name__}", str(error)))
                continue
            decoded.append((logical, message, value))
            if logical == ORDERS_EVENTS:
                event_markets.add(value["market"])
        batch.records = len(messages)
        self._resume_sequence(conn, trade_markets, events=False)
        self._resume_sequence(conn, event_markets, events=True)
        interval_ms = self.config.book_snapshot_interval_s * 1000
        # Fast path for the common case, a trade that is the next of its market (the same
        # classification SequenceTracker.observe makes); everything else goes through _sequence.
        tracker, trades, trade_src = self.trade_seq, batch.trades, batch.trade_src
        last = tracker.last
        for logical, message, v in decoded:
            try:
                if logical == TRADES:
                    market, trade_id = v[0], v[1]
                    digest = blake2b(message.value() or b"", digest_size=DIGEST_SIZE).digest()
                    if last.get(market, tracker.start) == trade_id - 1:
                        last[market] = trade_id
                        tracker.seen += 1
                        trades.append((*v, digest))
                        trade_src.append(message)
                    else:
                        self._sequence(batch, TRADES, market, trade_id, message, v, digest,
                                       self.rebuild_since is not None and v[2] < self.rebuild_since)
                    continue
                self._prepare_one(batch, logical, message, v, interval_ms)
            except (ValueError, OverflowError, TypeError, KeyError) as error:
                batch.rejected.append(_Rejected(message, f"invalid:{type(error).__name__}", str(error)))
        # The books as of the end of this batch (the next batch may change them before this one commits).
        batch.book_rows = [(self.config.name, m, self.books[m].seq, self.books[m].bucket, *self.books[m].state(),
                            self.books[m].pending) for m in sorted(batch.books)]
        return batch

    def _prepare_one(self, batch: _Batch, logical: str, message: Message, v: dict[str, Any], interval_ms: int) -> None:
        market = v["market"]
        if logical == ORDERS_EVENTS:
            row = event_row(v)
            digest = blake2b(message.value() or b"", digest_size=DIGEST_SIZE).digest()
            since = self.config.rebuild_since_ms
            self._sequence(batch, ORDERS_EVENTS, market, v["seq"], message, row, digest,
                           since is not None and v["ts"] < since)
        elif logical == MD_CANDLES:
            key = (market, v["interval"], v["window_start"])
            update = candle_row(v)
            previous = batch.candles.get(key)
            if previous is not None and candle_conflict(previous, update):
                raise RecordConflict(
                    f"md.candles record {market} {v['interval']} window {v['window_start']} at {_where(message)} "
                    f"repeats version last_trade_id={v['last_trade_id']} final={v['final']} of the window with other "
                    "values: two histories of one candle; the sink stops without writing its batch")
            batch.candles[key] = candle_fold(previous, update)
            batch.candle_src[key] = message
        else:
            self._apply_book(batch, market, v, message, interval_ms)

    def _sequence(self, batch: _Batch, logical: str, market: str, value: int, message: Message,
                  row: tuple[Any, ...], digest: bytes, rereading: bool) -> None:
        """Place a record the fast path did not take: in sequence or after a gap it is a row to
        write; a value already seen is a candidate, decided against the table by the writer."""
        tracker = self.trade_seq if logical == TRADES else self.event_seq
        expected = tracker.last.get(market, tracker.start) + 1
        verdict = tracker.observe(market, value)
        if verdict is Verdict.DUPLICATE:
            candidates = batch.trade_candidates if logical == TRADES else batch.event_candidates
            candidates.append(Candidate((market, value), row, digest, message, expected_stored=rereading,
                                        expected=expected))
            return
        if verdict is Verdict.GAP:
            SINK_ANOMALIES.labels(logical, "gap").inc()
            batch.anomalies.append((self.config.name, logical, market, "gap", expected, value, message.partition(),
                                    message.offset()))
            self.stats.gaps += 1
            self.log.error("sequence gap", topic=logical, market=market, expected=expected, got=value)
        if logical == TRADES:
            batch.trades.append((*row, digest))
            batch.trade_src.append(message)
        else:
            batch.events.append((*row, digest))
            batch.event_src.append(message)

    def _apply_book(self, batch: _Batch, market: str, v: dict[str, Any], message: Message, interval_ms: int) -> None:
        book = self.books.get(market)
        if book is None:
            book = self.books[market] = Book()
        step = apply_book(book, v, interval_ms)
        if step.brk is not None:
            SINK_ANOMALIES.labels(MD_BOOK, "book_break").inc()
            batch.anomalies.append((self.config.name, MD_BOOK, market, "book_break", step.brk[0], step.brk[1],
                                    message.partition(), message.offset()))
        if step.applied and book.synced:
            batch.books.add(market)
        if step.snapshot is not None:
            _, ts, seq, bids, asks = step.snapshot
            batch.snapshots.append((market, _ts(ts), seq, Jsonb(bids), Jsonb(asks)))

    # -- writing --------------------------------------------------------------------------------
    def _copy(self, conn: psycopg.Connection[Any], table: str, columns: Sequence[str], types: Sequence[str],
              rows: Iterable[tuple[Any, ...]]) -> None:
        stmt = sql.SQL("copy {} ({}) from stdin (format binary)").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
        with conn.cursor() as cur, cur.copy(stmt) as copy:
            copy.set_types(list(types))
            for row in rows:
                copy.write_row(row)

    def _insert_via_stage(self, conn: psycopg.Connection[Any], table: str, columns: Sequence[str],
                          types: Sequence[str], rows: list[tuple[Any, ...]], conflict: str,
                          check: str | None = None) -> tuple[int, tuple[Any, ...] | None]:
        """Insert ``rows`` through a staging table with the ``conflict`` clause; ``check`` (a query
        over the stage, ``{stage}``) returns a staged row that contradicts the table, if any."""
        stage = f"_stage_{table}"
        conn.execute(sql.SQL("create temp table if not exists {} (like {} including defaults) on commit delete rows")
                     .format(sql.Identifier(stage), sql.Identifier(table)))
        self._copy(conn, stage, columns, types, rows)
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        cur = conn.execute(sql.SQL("insert into {} ({}) select {} from {} {}").format(
            sql.Identifier(table), cols, cols, sql.Identifier(stage), sql.SQL(conflict)))
        inserted = cur.rowcount
        contradiction = None
        if check is not None:
            contradiction = conn.execute(sql.SQL(check).format(stage=sql.Identifier(stage))).fetchone()
        conn.execute(sql.SQL("truncate {}").format(sql.Identifier(stage)))
        return inserted, contradiction

    def _write_candles(self, conn: psycopg.Connection[Any], batch: _Batch, rejected: list[_Rejected]) -> int:
        rows, src = list(batch.candles.values()), list(batch.candle_src.values())
        if not rows:
            return 0
        start = time.perf_counter()
        try:
            with conn.transaction():
                written, contradiction = self._insert_via_stage(conn, "candles", CANDLE_COLUMNS, CANDLE_TYPES, rows,
                                                                CANDLE_UPSERT, CANDLE_CHECK)
                if contradiction is not None:
                    market, interval, window_start, last_trade_id = contradiction
                    raise RecordConflict(
                        f"md.candles record {market} {interval} window {window_start.isoformat()} has the version "
                        f"(last_trade_id {last_trade_id}) of the stored candle with other values: two histories of "
                        "one candle; the sink stops without writing its batch (`xchg db rebuild --yes` rebuilds the "
                        "database from the topics)")
                return written
        except DATA_ERRORS as error:
            if is_transient(error):
                raise
            self.log.warning("database rejected a batch: retrying row by row", table="candles",
                             error=str(error).strip())
            return self._insert_one_by_one(conn, "candles", CANDLE_COLUMNS, CANDLE_TYPES, rows, src, rejected,
                                           CANDLE_UPSERT)
        finally:
            DB_QUERY_SECONDS.labels("copy_candles").observe(time.perf_counter() - start)

    def _write_snapshots(self, conn: psycopg.Connection[Any], batch: _Batch) -> int:
        if not batch.snapshots:
            return 0
        with conn.transaction():
            written, contradiction = self._insert_via_stage(conn, "book_snapshots", SNAPSHOT_COLUMNS, SNAPSHOT_TYPES,
                                                            batch.snapshots, "on conflict do nothing", SNAPSHOT_CHECK)
        if contradiction is not None:
            market, book_seq, ts = contradiction
            raise RecordConflict(
                f"L2 snapshot {market} book_seq {book_seq} at {ts.isoformat()} replayed from md.book differs from the "
                "stored snapshot row: two histories of one book; the sink stops without writing its batch "
                "(`xchg db rebuild --yes` rebuilds the database from the topics)")
        return written

    def _insert_one_by_one(self, conn: psycopg.Connection[Any], table: str, columns: Sequence[str],
                           types: Sequence[str], rows: Sequence[tuple[Any, ...]], src: Sequence[Message | None],
                           rejected: list[_Rejected], conflict: str = "") -> int:
        """Insert each row under its own savepoint; a row the database rejects goes to ``rejected``."""
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        marks = sql.SQL(", ").join(sql.SQL("%s::" + t) for t in types)
        stmt = sql.SQL("insert into {} ({}) values ({}) {}").format(sql.Identifier(table), cols, marks,
                                                                   sql.SQL(conflict))
        written = 0
        for row, message in zip(rows, src, strict=True):
            try:
                with conn.transaction():
                    written += conn.execute(stmt, row).rowcount
            except psycopg.errors.UniqueViolation as error:
                raise _collision(table, error) from None
            except DATA_ERRORS as error:
                if is_transient(error) or message is None:
                    raise
                rejected.append(_Rejected(message, f"db_rejected:{type(error).__name__}",
                                          (error.diag.message_primary or str(error)).strip()))
        return written

    def _stored_rows(self, conn: psycopg.Connection[Any], journal: Journal,
                     keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], list[Stored]]:
        markets, values = zip(*sorted(set(keys)), strict=True)
        query = sql.SQL("select {}, record_digest from {} where ({}, {}) in (select * from unnest(%s::text[], %s::int8[]))"
                        ).format(sql.SQL(", ").join(map(sql.Identifier, journal.columns)),
                                 sql.Identifier(journal.table), sql.Identifier("market"), sql.Identifier(journal.key))
        stored: dict[tuple[str, int], list[Stored]] = defaultdict(list)
        for row in conn.execute(query, (list(markets), list(values))):
            digest = row[-1]
            stored[(row[0], row[1])].append(Stored(comparable(row[:-1]), bytes(digest) if digest is not None else None))
        return stored

    def _write_journal(self, conn: psycopg.Connection[Any], journal: Journal, rows: list[tuple[Any, ...]],
                       src: list[Message], candidates: list[Candidate], rejected: list[_Rejected],
                       anomalies: list[tuple[Any, ...]], done: _Written) -> int:
        """Write a batch's trades or events: rows in sequence by COPY; candidates, and the rows of
        a COPY that hit a stored key or a rejected value, by comparison with the stored rows."""
        start = time.perf_counter()
        written = 0
        try:
            if rows:
                try:
                    with conn.transaction():
                        self._copy(conn, journal.table, journal.write_columns, journal.write_types, rows)
                    written = len(rows)
                except DATA_ERRORS as error:
                    if is_transient(error):
                        raise
                    # Keys already stored (another writer of the same stream), or a value the
                    # database rejects: every row goes through the comparison, one by one.
                    self.log.warning("batch not copied: its rows are compared with the stored ones",
                                     table=journal.table, error=str(error).strip().splitlines()[0])
                    candidates = [Candidate((r[0], r[1]), r[:-1], r[-1], m) for r, m in zip(rows, src, strict=True)
                                  ] + candidates
            if candidates:
                written += self._write_candidates(conn, journal, candidates, rejected, anomalies, done)
        finally:
            DB_QUERY_SECONDS.labels(f"copy_{journal.table}").observe(time.perf_counter() - start)
        return written

    def _write_candidates(self, conn: psycopg.Connection[Any], journal: Journal, candidates: list[Candidate],
                          rejected: list[_Rejected], anomalies: list[tuple[Any, ...]], done: _Written) -> int:
        # No other writer may add a key between the look-up and the insert (readers are not blocked).
        conn.execute(sql.SQL("lock table {} in share row exclusive mode").format(sql.Identifier(journal.table)))
        decided = classify(candidates, self._stored_rows(conn, journal, (c.key for c in candidates)))
        if decided.conflict is not None:
            raise _conflict(journal, *decided.conflict)
        for c in decided.duplicates:
            if not c.repeat:
                done.already_stored += 1
                continue
            done.duplicates[journal.topic] = done.duplicates.get(journal.topic, 0) + 1
            anomalies.append((self.config.name, journal.topic, c.key[0], "duplicate", c.expected, c.key[1],
                              c.source.partition(), c.source.offset()))
            self.log.warning("duplicate skipped", topic=journal.topic, market=c.key[0], got=c.key[1],
                             expected=c.expected)
        late = sum(1 for c in decided.insert if c.expected is not None)
        if late:
            done.late += late
            self.log.warning("records with an already-seen sequence value were not stored: written",
                             topic=journal.topic, count=late)
        return self._insert_rows(conn, journal, decided.insert, rejected)

    def _insert_rows(self, conn: psycopg.Connection[Any], journal: Journal, rows: list[Candidate],
                     rejected: list[_Rejected]) -> int:
        """COPY rows known to be absent; one by one if the database rejects one of them."""
        if not rows:
            return 0
        values = [(*c.row, c.digest) for c in rows]
        try:
            with conn.transaction():
                self._copy(conn, journal.table, journal.write_columns, journal.write_types, values)
            return len(values)
        except psycopg.errors.UniqueViolation as error:
            raise _collision(journal.table, error) from None
        except DATA_ERRORS as error:
            if is_transient(error):
                raise
        return self._insert_one_by_one(conn, journal.table, journal.write_columns, journal.write_types, values,
                                       [c.source for c in rows], rejected)

    def _already_stored(self, conn: psycopg.Connection[Any], batch: _Batch) -> bool:
        stored = {(t, p): o for t, p, o in conn.execute(
            "select topic, partition, next_offset from kafka_offsets where consumer = %s", (self.config.name,))}
        return bool(batch.offsets) and all(stored.get(k, -1) >= v for k, v in batch.offsets.items())

    def _write_batch(self, conn: psycopg.Connection[Any], batch: _Batch, retry: bool) -> _Written:
        done = _Written()
        if retry and self._already_stored(conn, batch):
            self.log.info("batch was committed before the connection failed: not written again")
            return done
        self._maintain_partitions(conn)
        # Per attempt: a retried batch starts again from what was prepared.
        rejected = list(batch.rejected)
        anomalies = list(batch.anomalies)
        with conn.transaction():
            done.rows["trades"] = self._write_journal(conn, TRADES_TABLE, batch.trades, batch.trade_src,
                                                      batch.trade_candidates, rejected, anomalies, done)
            done.rows["order_events"] = self._write_journal(conn, EVENTS_TABLE, batch.events, batch.event_src,
                                                            batch.event_candidates, rejected, anomalies, done)
            done.rows["candles"] = self._write_candles(conn, batch, rejected)
            if batch.snapshots:
                done.rows["book_snapshots"] = self._write_snapshots(conn, batch)
            if batch.book_rows:
                with conn.cursor() as cur:
                    cur.executemany(
                        "insert into sink_book_state (consumer, market, book_seq, last_snapshot_bucket, bids, asks,"
                        " pending_part) values (%s, %s, %s, %s, %s, %s, %s) on conflict (consumer, market) do update"
                        " set book_seq = excluded.book_seq, last_snapshot_bucket = excluded.last_snapshot_bucket,"
                        " bids = excluded.bids, asks = excluded.asks, pending_part = excluded.pending_part",
                        batch.book_rows)
            if anomalies:
                anomalies.sort(key=lambda a: (a[1], a[6], a[7]))  # topic, partition, offset: stream order
                with conn.cursor() as cur:
                    cur.executemany(
                        "insert into sink_anomalies (consumer, topic, market, kind, expected, got, kafka_partition,"
                        " kafka_offset) values (%s, %s, %s, %s, %s, %s, %s, %s)", anomalies)
            if rejected:
                self._dead_letter(rejected)
            start = time.perf_counter()
            with conn.cursor() as cur:
                cur.executemany(
                    "insert into kafka_offsets (consumer, topic, partition, next_offset) values (%s, %s, %s, %s)"
                    " on conflict (consumer, topic, partition) do update set next_offset = excluded.next_offset,"
                    " updated_at = now()",
                    [(self.config.name, t, p, o) for (t, p), o in sorted(batch.offsets.items())])
            DB_QUERY_SECONDS.labels("store_offsets").observe(time.perf_counter() - start)
        done.dead_letters = len(rejected)
        return done

    def _dead_letter(self, rejected: list[_Rejected]) -> None:
        if self.dlq is None:
            self.dlq = Producer(producer_config(self.config.bootstrap))
        for r in rejected:
            m = r.message
            self.dlq.produce(self.ns(DLQ_SINK), key=m.key(), value=m.value(), headers=[
                ("reason", r.reason.encode()), ("detail", r.detail[:1000].encode()),
                ("source_topic", str(m.topic()).encode()), ("source_partition", str(m.partition()).encode()),
                ("source_offset", str(m.offset()).encode())])
        remaining = self.dlq.flush(30)
        if remaining:
            raise psycopg.OperationalError(f"dead-letter topic: {remaining} record(s) not acknowledged")
        self.log.warning("records sent to the dead-letter topic", count=len(rejected),
                         reasons=sorted({r.reason for r in rejected}))

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
        batch = self._with_db("prepare", lambda conn: self._prepare(messages, conn))
        self._drain()  # batches commit one after the other, in consumption order
        self.pending = (self.writer.submit(self._write_retrying, batch), batch, len(messages))
        return len(messages)

    def _write_retrying(self, batch: _Batch) -> _Written:
        attempts = [0]

        def write(conn: psycopg.Connection[Any]) -> _Written:
            attempts[0] += 1
            return self._write_batch(conn, batch, retry=attempts[0] > 1)

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
        if self.dlq is not None:
            self.dlq.flush(10)
        for slot in list(self.conns):
            self._disconnect(slot)
        if self.owns_lease:
            self.lease.release()


def market_rows(path: Any) -> list[tuple[str, str, str, int, int, str, str]]:
    """Rows of the ``markets`` table from the market registry file."""
    from streams.markets import MarketRegistry

    return [(m.symbol, m.base, m.quote, m.price_decimals, m.qty_decimals, str(m.tick_size), str(m.lot_size))
            for m in MarketRegistry.load(path)]
