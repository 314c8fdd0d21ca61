"""The exactly-once analytics sink: Kafka output topics → PostgreSQL/TimescaleDB (``xchg sink timescale``).

Exactly once, by construction:

- Input: ``trades``, ``orders.events``, ``md.candles`` and ``md.book`` of the namespace, read with
  ``isolation.level=read_committed`` by a consumer with *manual* assignment (no consumer group: the
  database, not Kafka, owns the positions). One sink instance per ``sink_name``.
- Each batch is written in ONE database transaction together with the next offset of every
  partition it consumed (table ``kafka_offsets``). On start the sink seeks to the offsets stored
  in the database, so a crash anywhere (before, during or after the commit) neither loses nor
  repeats a row.
- Second guard: the tables' keys include the event time ((market, trade_id, ts) ...). A batch is
  first COPYed straight into the table (fast path); if a key already exists the transaction is
  rolled back to a savepoint and the batch goes through a staging table with
  ``ON CONFLICT DO NOTHING``. Candles are upserted by (market, interval, window_start), never
  going back to an older state (``last_trade_id`` only grows; ``final`` sticks).
- Input anomalies: a per-market ``SequenceTracker`` (``trade_id`` for trades, ``seq`` for events,
  resumed from the highest stored value) classifies every record; duplicates are skipped, gaps are
  written anyway; both are logged, counted (``xchg_sink_anomalies_total``) and stored in
  ``sink_anomalies``. ``md.book`` deltas are checked with ``BookChain`` semantics.
- A record that cannot be decoded, or that the database rejects (a constraint or a value out of
  range), goes to ``dlq.sink`` with the reason in its headers instead of blocking the stream
  (found by retrying the failed batch row by row under savepoints). The DLQ producer is flushed
  before the database commit (at least once on the DLQ side).

Database failure (connection lost, server shut down, statement timeout): the sink stops consuming,
opens its circuit (``xchg_sink_circuit_state`` = 1, a log line), retries the same batch with capped
exponential backoff (stamina; each attempt is half-open = 2) on a new connection, and closes the
circuit on success. A commit whose outcome is unknown (the connection died during COMMIT) is
resolved on reconnect by reading the stored offsets: if they already cover the batch, the batch
is not written again.

Throughput: a writer thread commits batch N (COPY + offsets) while the main thread consumes and
decodes batch N+1; batches still commit one at a time, in consumption order. In-sequence trades take
a fast path. On this 2-core machine the bottleneck is per-record Avro decoding in Python
(``xchg bench sink`` compares with raw COPY of pre-built rows).

L2 snapshots: the sink keeps each market's aggregated book from ``md.book`` and writes a snapshot
row whenever a delta's event time enters a new ``book_snapshot_interval_s`` bucket; the book itself
is stored with the offsets (``sink_book_state``) so a restart resumes it exactly.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import stamina
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from psycopg import sql
from psycopg.types.json import Jsonb

from streams.observability import DB_QUERY_SECONDS, SINK_ANOMALIES, SINK_CIRCUIT, SINK_ROWS, get_logger
from streams.runtime.clients import consumer_config, producer_config
from streams.runtime.namespace import Namespace
from streams.runtime.reader import topic_partitions
from streams.runtime.sequence import SequenceTracker, Verdict
from streams.serde.codec import Codec, DecodeError
from streams.serde.topics import DLQ_SINK, MD_BOOK, MD_CANDLES, ORDERS_EVENTS, TRADES

INPUT_TOPICS = (TRADES, ORDERS_EVENTS, MD_CANDLES, MD_BOOK)
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError)
CIRCUIT_CLOSED, CIRCUIT_OPEN, CIRCUIT_HALF_OPEN = 0, 1, 2
BOOK_DEPTH = 50

_TRADE_ROW = "trades (row)"  # marks a trade decoded straight into its table row
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
    skip_before_ms: int | None = None  # rebuild --since: records with an earlier event time are ignored


@dataclass
class SinkStats:
    batches: int = 0
    records: int = 0
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    duplicates: int = 0
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

    trades: list[tuple[Any, ...]] = field(default_factory=list)
    trade_src: list[Message] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    event_src: list[Message] = field(default_factory=list)
    candles: dict[tuple[str, str, int], tuple[Any, ...]] = field(default_factory=dict)
    candle_src: dict[tuple[str, str, int], Message] = field(default_factory=dict)
    snapshots: list[tuple[Any, ...]] = field(default_factory=list)
    books: set[str] = field(default_factory=set)
    book_rows: list[tuple[Any, ...]] = field(default_factory=list)
    anomalies: list[tuple[Any, ...]] = field(default_factory=list)
    rejected: list[_Rejected] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # physical topic, partition → next
    records: int = 0


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(ms: int) -> datetime:
    """Milliseconds since the epoch as an aware UTC datetime (exact; faster than fromtimestamp)."""
    return _EPOCH + timedelta(0, 0, 0, ms)


class _Book:
    __slots__ = ("asks", "bids", "bucket", "seq")

    def __init__(self, seq: int = 0, bucket: int = -1, bids: dict[int, int] | None = None,
                 asks: dict[int, int] | None = None) -> None:
        self.seq, self.bucket = seq, bucket
        self.bids: dict[int, int] = bids or {}
        self.asks: dict[int, int] = asks or {}

    def levels(self) -> tuple[Jsonb, Jsonb]:
        bids = sorted(self.bids.items(), key=lambda kv: -kv[0])[:BOOK_DEPTH]
        asks = sorted(self.asks.items())[:BOOK_DEPTH]
        return Jsonb([list(x) for x in bids]), Jsonb([list(x) for x in asks])

    def state(self) -> tuple[str, str]:
        return json.dumps(sorted(self.bids.items())), json.dumps(sorted(self.asks.items()))


class TimescaleSink:
    def __init__(self, config: SinkConfig, codec: Codec | None = None,
                 markets: Iterable[tuple[str, str, str, int, int, str, str]] = ()) -> None:
        self.config = config
        self.codec = codec or Codec(schema_registry_url=config.schema_registry_url)
        self.markets = list(markets)
        self.log = get_logger("sink").bind(sink=config.name)
        self.stats = SinkStats()
        self.ns = config.namespace
        self.conns: dict[str, psycopg.Connection[Any]] = {}  # "read" (main thread), "write" (writer thread)
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-writer")
        self.pending: tuple[Future[dict[str, int]], _Batch, int] | None = None
        self.logical: dict[str, str] = {}
        self.read_trade = self.codec.row_reader(TRADES, TRADE_COLUMNS, {"ts": _ts})
        self.stopping = False
        self.trade_seq = SequenceTracker()
        self.event_seq = SequenceTracker()
        self.known_trade_markets: set[str] = set()
        self.known_event_markets: set[str] = set()
        self.books: dict[str, _Book] = {}
        self.partitions: list[TopicPartition] = []
        self.position: dict[tuple[str, int], int] = {}
        self.circuit = CIRCUIT_CLOSED
        self.outage_started: float | None = None
        self.partition_day: date | None = None
        self.consumer: Consumer | None = None
        self.dlq: Producer | None = None
        self.probe: Consumer | None = None
        SINK_CIRCUIT.set(CIRCUIT_CLOSED)

    # -- database -------------------------------------------------------------------------------
    def _connect(self, slot: str) -> psycopg.Connection[Any]:
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
        conn = self.conns.pop(slot, None)
        if conn is not None:
            conn.close()

    def _with_db(self, what: str, action: Any, slot: str = "read") -> Any:
        """Run ``action(conn)`` with retries on connection failures; tracks the circuit state."""
        for attempt in stamina.retry_context(on=TRANSIENT, attempts=None, timeout=None, wait_initial=0.1,
                                             wait_max=self.config.retry_wait_max_s, wait_jitter=0.1):
            with attempt:
                if attempt.num > 1:
                    self._set_circuit(CIRCUIT_HALF_OPEN, what)
                try:
                    result = action(self._connect(slot))
                except TRANSIENT as error:
                    self.stats.db_failures += 1
                    self._disconnect(slot)
                    self._set_circuit(CIRCUIT_OPEN, what, str(error).strip().splitlines()[0] if str(error) else "")
                    raise
        self._set_circuit(CIRCUIT_CLOSED, what)
        return result

    def _set_circuit(self, state: int, what: str, error: str = "") -> None:
        if state == self.circuit:
            return
        previous, self.circuit = self.circuit, state
        SINK_CIRCUIT.set(state)
        if state == CIRCUIT_OPEN and previous == CIRCUIT_CLOSED:
            self.outage_started = time.monotonic()
            self.log.warning("database circuit open: consuming stopped, retrying", operation=what, error=error)
        elif state == CIRCUIT_OPEN:
            self.log.info("database still unavailable", operation=what, error=error)
        elif state == CIRCUIT_HALF_OPEN:
            self.log.info("database circuit half-open: retrying", operation=what)
        else:
            outage = time.monotonic() - (self.outage_started or time.monotonic())
            self.stats.outage_seconds.append(outage)
            self.log.warning("database circuit closed: resumed", operation=what, outage_s=round(outage, 3))

    def _load_state(self, conn: psycopg.Connection[Any]) -> dict[tuple[str, int], int]:
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
            books = conn.execute("select market, book_seq, last_snapshot_bucket, bids, asks from sink_book_state"
                                 " where consumer = %s", (self.config.name,)).fetchall()
        self.books = {m: _Book(seq, bucket, {int(p): q for p, q in bids}, {int(p): q for p, q in asks})
                      for m, seq, bucket, bids, asks in books}
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
                if isinstance(error, TRANSIENT):
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
                raise RuntimeError(f"topic {physical} does not exist (run `xchg topics apply`)")
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
        decoded: list[tuple[str, Message, Any]] = []  # a dict, or a finished row for _TRADE_ROW
        # One pass: offsets, decoding, the markets whose stored sequence must be known first.
        offsets, logical_of, decode, rejected = batch.offsets, self.logical, self.codec.decode, batch.rejected
        read_trade = self.read_trade
        # Trades come as finished rows unless a rebuild skips records by time (it needs them whole).
        fast = self.config.skip_before_ms is None
        trade_markets: set[str] = set()
        event_markets: set[str] = set()
        for message in messages:
            topic: str = message.topic()  # type: ignore[assignment]  # never None for a consumed record
            offsets[(topic, message.partition())] = message.offset() + 1  # type: ignore[index,operator]
            logical = logical_of.get(topic)
            if logical is None:
                logical = logical_of[topic] = self.ns.logical(topic)
            try:
                if logical == TRADES and fast:
                    row = read_trade(message.value())  # the table row itself: no dict per trade
                    decoded.append((_TRADE_ROW, message, row))
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
            if logical == TRADES:
                trade_markets.add(value["market"])
            elif logical == ORDERS_EVENTS:
                event_markets.add(value["market"])
        batch.records = len(messages)
        self._resume_sequence(conn, trade_markets, events=False)
        self._resume_sequence(conn, event_markets, events=True)
        interval_ms = self.config.book_snapshot_interval_s * 1000
        # Fast path for the common case, a trade that is the next of its market (the same
        # classification SequenceTracker.observe makes); everything else goes through _sequence
        # (trade rows) or _prepare_one.
        tracker, trades, trade_src = self.trade_seq, batch.trades, batch.trade_src
        last = tracker.last
        for logical, message, v in decoded:
            try:
                if logical == _TRADE_ROW:
                    market, trade_id = v[0], v[1]
                    if last.get(market, tracker.start) == trade_id - 1:
                        last[market] = trade_id
                        tracker.seen += 1
                    elif not self._sequence(batch, tracker, TRADES, market, trade_id, message):
                        continue
                    trades.append(v)
                    trade_src.append(message)
                    continue
                self._prepare_one(batch, logical, message, v, interval_ms)
            except (ValueError, OverflowError, TypeError, KeyError) as error:
                batch.rejected.append(_Rejected(message, f"invalid:{type(error).__name__}", str(error)))
        # The books as of the end of this batch (the next batch may change them before this one commits).
        batch.book_rows = [(self.config.name, m, self.books[m].seq, self.books[m].bucket, *self.books[m].state())
                           for m in sorted(batch.books)]
        return batch

    def _prepare_one(self, batch: _Batch, logical: str, message: Message, v: dict[str, Any], interval_ms: int) -> None:
        market = v["market"]
        skip = self.config.skip_before_ms
        if skip is not None and (v["window_start"] if logical == MD_CANDLES else v["ts"]) < skip:
            return
        if logical == TRADES:
            row: tuple[Any, ...] = (
                market, v["trade_id"], _ts(v["ts"]), v["seq"], v["price"], v["qty"], v["maker_order_id"],
                v["maker_account"], v["taker_order_id"], v["taker_account"], v["taker_side"])
            if self._sequence(batch, self.trade_seq, logical, market, v["trade_id"], message):
                batch.trades.append(row)
                batch.trade_src.append(message)
        elif logical == ORDERS_EVENTS:
            name, body = v["body"]
            row = (market, v["seq"], _ts(v["ts"]), v["command_id"], name.rsplit(".", 1)[-1],
                   body.get("order_id"), body.get("account"), Jsonb(body, dumps=_dumps))
            if self._sequence(batch, self.event_seq, logical, market, v["seq"], message):
                batch.events.append(row)
                batch.event_src.append(message)
        elif logical == MD_CANDLES:
            key = (market, v["interval"], v["window_start"])
            previous = batch.candles.get(key)
            if previous is not None and (previous[11] > v["last_trade_id"] or (previous[12] and not v["final"])):
                return
            batch.candles[key] = (market, v["interval"], _ts(v["window_start"]), v["open"], v["high"], v["low"],
                                  v["close"], v["volume"], v["quote_volume"], v["trade_count"],
                                  v["first_trade_id"], v["last_trade_id"], v["final"])
            batch.candle_src[key] = message
        else:
            self._apply_book(batch, market, v, message, interval_ms)

    def _sequence(self, batch: _Batch, tracker: SequenceTracker, logical: str, market: str, value: int,
                  message: Message) -> bool:
        expected = tracker.last.get(market, tracker.start) + 1
        verdict = tracker.observe(market, value)
        if verdict is Verdict.OK:
            return True
        kind = "duplicate" if verdict is Verdict.DUPLICATE else "gap"
        SINK_ANOMALIES.labels(logical, kind).inc()
        batch.anomalies.append((self.config.name, logical, market, kind, expected, value, message.partition(),
                                message.offset()))
        if verdict is Verdict.DUPLICATE:
            self.stats.duplicates += 1
            self.log.warning("duplicate skipped", topic=logical, market=market, got=value, expected=expected)
            return False
        self.stats.gaps += 1
        self.log.error("sequence gap", topic=logical, market=market, expected=expected, got=value)
        return True

    def _apply_book(self, batch: _Batch, market: str, v: dict[str, Any], message: Message, interval_ms: int) -> None:
        book = self.books.get(market)
        if book is None:
            book = self.books[market] = _Book()
        if v["snapshot"]:
            book.bids, book.asks = {}, {}
        elif v["book_seq"] <= book.seq:
            return  # a replayed delta
        elif book.seq and v["prev_book_seq"] != book.seq:
            SINK_ANOMALIES.labels(MD_BOOK, "book_break").inc()
            batch.anomalies.append((self.config.name, MD_BOOK, market, "book_break", book.seq, v["prev_book_seq"],
                                    message.partition(), message.offset()))
        for change in v["changes"]:
            side = book.bids if change["side"] == "buy" else book.asks
            if change["qty"]:
                side[change["price"]] = change["qty"]
            else:
                side.pop(change["price"], None)
        book.seq = v["book_seq"]
        batch.books.add(market)
        bucket = v["ts"] // interval_ms
        if bucket > book.bucket:
            book.bucket = bucket
            bids, asks = book.levels()
            batch.snapshots.append((market, _ts(v["ts"]), book.seq, bids, asks))

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
                          types: Sequence[str], rows: list[tuple[Any, ...]], conflict: str) -> int:
        stage = f"_stage_{table}"
        conn.execute(sql.SQL("create temp table if not exists {} (like {} including defaults) on commit delete rows")
                     .format(sql.Identifier(stage), sql.Identifier(table)))
        self._copy(conn, stage, columns, types, rows)
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        cur = conn.execute(sql.SQL("insert into {} ({}) select {} from {} {}").format(
            sql.Identifier(table), cols, cols, sql.Identifier(stage), sql.SQL(conflict)))
        inserted = cur.rowcount
        conn.execute(sql.SQL("truncate {}").format(sql.Identifier(stage)))
        return inserted

    def _write_table(self, conn: psycopg.Connection[Any], table: str, columns: Sequence[str], types: Sequence[str],
                     rows: list[tuple[Any, ...]], src: list[Message], conflict: str, fast: bool,
                     rejected: list[_Rejected]) -> int:
        """Write ``rows``; rows the database rejects are removed and added to ``rejected``."""
        if not rows:
            return 0
        start = time.perf_counter()
        try:
            with conn.transaction():
                if fast:
                    try:
                        with conn.transaction():
                            self._copy(conn, table, columns, types, rows)
                        return len(rows)
                    except psycopg.errors.UniqueViolation:
                        self.log.warning("keys already stored: batch goes through the staging table", table=table)
                return self._insert_via_stage(conn, table, columns, types, rows, conflict)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as error:
            if isinstance(error, TRANSIENT):
                raise
            self.log.warning("database rejected a batch: retrying row by row", table=table, error=str(error).strip())
            return self._write_rows_one_by_one(conn, table, columns, types, rows, src, conflict, rejected)
        finally:
            DB_QUERY_SECONDS.labels(f"copy_{table}").observe(time.perf_counter() - start)

    def _write_rows_one_by_one(self, conn: psycopg.Connection[Any], table: str, columns: Sequence[str],
                               types: Sequence[str], rows: list[tuple[Any, ...]], src: list[Message],
                               conflict: str, rejected: list[_Rejected]) -> int:
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        marks = sql.SQL(", ").join(sql.SQL("%s::" + t) for t in types)
        stmt = sql.SQL("insert into {} ({}) values ({}) {}").format(sql.Identifier(table), cols, marks, sql.SQL(conflict))
        written = 0
        for row, message in zip(rows, src, strict=True):
            try:
                with conn.transaction():
                    written += conn.execute(stmt, row).rowcount
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as error:
                if isinstance(error, TRANSIENT):
                    raise
                rejected.append(_Rejected(message, f"db_rejected:{type(error).__name__}",
                                          (error.diag.message_primary or str(error)).strip()))
        return written

    def _already_stored(self, conn: psycopg.Connection[Any], batch: _Batch) -> bool:
        stored = {(t, p): o for t, p, o in conn.execute(
            "select topic, partition, next_offset from kafka_offsets where consumer = %s", (self.config.name,))}
        return bool(batch.offsets) and all(stored.get(k, -1) >= v for k, v in batch.offsets.items())

    def _write_batch(self, conn: psycopg.Connection[Any], batch: _Batch, retry: bool) -> dict[str, int]:
        if retry and self._already_stored(conn, batch):
            self.log.info("batch was committed before the connection failed: not written again")
            return {}
        self._maintain_partitions(conn)
        rejected = list(batch.rejected)
        written: dict[str, int] = {}
        with conn.transaction():
            written["trades"] = self._write_table(
                conn, "trades", TRADE_COLUMNS, TRADE_TYPES, batch.trades, batch.trade_src,
                "on conflict do nothing", True, rejected)
            written["order_events"] = self._write_table(
                conn, "order_events", EVENT_COLUMNS, EVENT_TYPES, batch.events, batch.event_src,
                "on conflict do nothing", True, rejected)
            written["candles"] = self._write_table(
                conn, "candles", CANDLE_COLUMNS, CANDLE_TYPES, list(batch.candles.values()),
                list(batch.candle_src.values()),
                "on conflict (market, interval, window_start) do update set open = excluded.open,"
                " high = excluded.high, low = excluded.low, close = excluded.close, volume = excluded.volume,"
                " quote_volume = excluded.quote_volume, trade_count = excluded.trade_count,"
                " first_trade_id = excluded.first_trade_id, last_trade_id = excluded.last_trade_id,"
                " final = candles.final or excluded.final, updated_at = now()"
                " where candles.last_trade_id < excluded.last_trade_id"
                " or (candles.last_trade_id = excluded.last_trade_id and excluded.final and not candles.final)",
                False, rejected)
            if batch.snapshots:
                written["book_snapshots"] = self._insert_via_stage(
                    conn, "book_snapshots", SNAPSHOT_COLUMNS, SNAPSHOT_TYPES, batch.snapshots,
                    "on conflict do nothing")
            if batch.book_rows:
                with conn.cursor() as cur:
                    cur.executemany(
                        "insert into sink_book_state (consumer, market, book_seq, last_snapshot_bucket, bids, asks)"
                        " values (%s, %s, %s, %s, %s, %s) on conflict (consumer, market) do update set"
                        " book_seq = excluded.book_seq, last_snapshot_bucket = excluded.last_snapshot_bucket,"
                        " bids = excluded.bids, asks = excluded.asks", batch.book_rows)
            if batch.anomalies:
                with conn.cursor() as cur:
                    cur.executemany(
                        "insert into sink_anomalies (consumer, topic, market, kind, expected, got, kafka_partition,"
                        " kafka_offset) values (%s, %s, %s, %s, %s, %s, %s, %s)", batch.anomalies)
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
        written["dead_letters"] = len(rejected)
        return written

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
        stored = self._with_db("load_state", self._load_state)
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
                if m.error() is not None:
                    self.log.warning("consumer error", error=str(m.error()))
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

    def _write_retrying(self, batch: _Batch) -> dict[str, int]:
        attempts = [0]

        def write(conn: psycopg.Connection[Any]) -> dict[str, int]:
            attempts[0] += 1
            return self._write_batch(conn, batch, retry=attempts[0] > 1)

        return self._with_db("write_batch", write, slot="write")  # type: ignore[no-any-return]

    def _drain(self) -> None:
        """Wait for the batch being written; account for it (raises what the writer raised)."""
        if self.pending is None:
            return
        future, batch, count = self.pending
        self.pending = None
        written = future.result()
        for table, n in written.items():
            if table != "dead_letters":
                SINK_ROWS.labels(table).inc(n)
            self.stats.rows[table] += n
        self.stats.dead_letters += written.get("dead_letters", 0)
        self.stats.batches += 1
        self.stats.records += count
        for (t, p), o in batch.offsets.items():
            self.position[(t, p)] = o

    def run(self, on_batch: Callable[[int], Any] | None = None) -> SinkStats:
        """Consume and write until a stop condition of the config (or forever); ``on_batch`` gets
        the number of records of each written batch."""
        self.start()
        started = last_input = time.monotonic()
        last_report = started
        self.stopping = False
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._stop_signal)
        try:
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
        return self.stats

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


def market_rows(path: Any) -> list[tuple[str, str, str, int, int, str, str]]:
    """Rows of the ``markets`` table from the market registry file."""
    from streams.markets import MarketRegistry

    return [(m.symbol, m.base, m.quote, m.price_decimals, m.qty_decimals, str(m.tick_size), str(m.lot_size))
            for m in MarketRegistry.load(path)]
