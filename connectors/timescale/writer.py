"""Writing one prepared ``Batch`` into PostgreSQL: COPY, the fallbacks, the dead letters and the
offsets, in ONE transaction (``BatchWriter.write``).

Invariants:

- The rows of a batch and the next offset of every partition it consumed (``kafka_offsets``) are
  committed together or not at all; so is the book state (``sink_book_state``) and the input
  anomalies (``sink_anomalies``, in stream order). A retried batch starts again from what was
  prepared, and a batch whose offsets are already stored (a commit whose outcome was lost with
  the connection) is not written again.
- Fast path: journal rows in sequence, candles and snapshots go in by binary COPY. When a COPY
  hits a stored key or a value the database rejects, every row of it is compared with the stored
  rows of its key under a table lock (``records.classify``): duplicates are skipped (reported
  when they are input anomalies), absent rows written, and a different row with the key stops the
  sink (``RecordConflict``, nothing of the batch written). Rows the database still rejects go in
  one by one under savepoints and the rejected ones go to the dead-letter topic.
- Candles are upserted never going back to an older state (``CANDLE_UPSERT``); a staged candle of
  the stored version with other values, or a snapshot that differs from the stored one, is a
  conflict.
- The dead letters are flushed before the commit: a dead-letter topic that does not acknowledge
  them fails the batch with ``DeadLetterUnacknowledged`` (retried as an outage).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Message, Producer
from psycopg import sql

from connectors.timescale.batch import Anomaly, Batch, Rejected
from connectors.timescale.errors import (
    DATA_ERRORS,
    DeadLetterUnacknowledged,
    RecordConflict,
    is_transient,
)
from connectors.timescale.records import Candidate, Stored, classify, comparable, journal_conflict
from connectors.timescale.tables import (
    CANDLES_TABLE,
    EVENT_JOURNAL,
    SNAPSHOTS_TABLE,
    TRADE_JOURNAL,
    Journal,
    Table,
)
from streams.observability import DB_QUERY_SECONDS, get_logger
from streams.runtime.clients import producer_config

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


@dataclass
class Written:
    """What one committed batch did (counted once, after its commit)."""

    rows: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)  # topic → byte-identical repeats
    already_stored: int = 0
    late: int = 0


def _collision(table: str, error: psycopg.Error) -> RecordConflict:
    """A key collision after every key was looked up under the table lock: a writer outside the
    sink's locks, not a fault of the row, so the sink stops rather than dead-letters it."""
    detail = (error.diag.message_detail or error.diag.message_primary or str(error)).strip().splitlines()[0]
    return RecordConflict(f"{table}: a row was stored by another writer while the sink held the table ({detail}); "
                          "the sink stops without writing its batch")


class DeadLetterTopic:
    """The sink's producer to ``dlq.sink`` (created on the first dead letter): each record is sent
    as it was consumed, with the reason and its source in its headers."""

    def __init__(self, bootstrap: str, topic: str, sink_name: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.producer: Producer | None = None
        self.log = get_logger("sink").bind(sink=sink_name)

    def send(self, rejected: Sequence[Rejected]) -> None:
        """Produce and flush ``rejected``; ``DeadLetterUnacknowledged`` if some were not acknowledged."""
        if self.producer is None:
            self.producer = Producer(producer_config(self.bootstrap))
        for r in rejected:
            m = r.message
            self.producer.produce(self.topic, key=m.key(), value=m.value(), headers=[
                ("reason", r.reason.encode()), ("detail", r.detail[:1000].encode()),
                ("source_topic", str(m.topic()).encode()), ("source_partition", str(m.partition()).encode()),
                ("source_offset", str(m.offset()).encode())])
        remaining = self.producer.flush(30)
        if remaining:
            raise DeadLetterUnacknowledged(f"dead-letter topic: {remaining} record(s) not acknowledged")
        self.log.warning("records sent to the dead-letter topic", count=len(rejected),
                         reasons=sorted({r.reason for r in rejected}))

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(10)


def copy_rows(conn: psycopg.Connection[Any], table: str, columns: Table, rows: Iterable[tuple[Any, ...]]) -> None:
    """Binary COPY of ``rows`` (in the order of ``columns``) into ``table``."""
    stmt = sql.SQL("copy {} ({}) from stdin (format binary)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns.names)))
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        copy.set_types(list(columns.types))
        for row in rows:
            copy.write_row(row)


class BatchWriter:
    """Writes batches for the sink ``consumer`` (the writer thread's only state: the day its
    partitions were last maintained). Every method runs inside the caller's retries: a transient
    error propagates, the transaction rolled back."""

    def __init__(self, consumer: str, retention_days: int, dead_letters: DeadLetterTopic) -> None:
        self.consumer = consumer
        self.retention_days = retention_days
        self.dead_letters = dead_letters
        self.partition_day: date | None = None
        self.log = get_logger("sink").bind(sink=consumer)

    def write(self, conn: psycopg.Connection[Any], batch: Batch, retry: bool) -> Written:
        """Write ``batch`` in one transaction; ``retry``: an earlier attempt may have committed it."""
        done = Written()
        if retry and self._already_stored(conn, batch):
            self.log.info("batch was committed before the connection failed: not written again")
            return done
        self.maintain_partitions(conn)
        # Per attempt: a retried batch starts again from what was prepared.
        rejected = list(batch.rejected)
        anomalies = list(batch.anomalies)
        with conn.transaction():
            done.rows["trades"] = self._write_journal(conn, TRADE_JOURNAL, batch.trades, batch.trade_src,
                                                      batch.trade_candidates, rejected, anomalies, done)
            done.rows["order_events"] = self._write_journal(conn, EVENT_JOURNAL, batch.events, batch.event_src,
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
                anomalies.sort(key=lambda a: a.stream_order)
                with conn.cursor() as cur:
                    cur.executemany(
                        "insert into sink_anomalies (consumer, topic, market, kind, expected, got, kafka_partition,"
                        " kafka_offset) values (%s, %s, %s, %s, %s, %s, %s, %s)",
                        [a.row(self.consumer) for a in anomalies])
            if rejected:
                self.dead_letters.send(rejected)
            start = time.perf_counter()
            with conn.cursor() as cur:
                cur.executemany(
                    "insert into kafka_offsets (consumer, topic, partition, next_offset) values (%s, %s, %s, %s)"
                    " on conflict (consumer, topic, partition) do update set next_offset = excluded.next_offset,"
                    " updated_at = now()",
                    [(self.consumer, t, p, o) for (t, p), o in sorted(batch.offsets.items())])
            DB_QUERY_SECONDS.labels("store_offsets").observe(time.perf_counter() - start)
        done.dead_letters = len(rejected)
        return done

    def _already_stored(self, conn: psycopg.Connection[Any], batch: Batch) -> bool:
        stored = {(t, p): o for t, p, o in conn.execute(
            "select topic, partition, next_offset from kafka_offsets where consumer = %s", (self.consumer,))}
        return bool(batch.offsets) and all(stored.get(k, -1) >= v for k, v in batch.offsets.items())

    def maintain_partitions(self, conn: psycopg.Connection[Any], force: bool = False) -> None:
        """Plain path: daily partitions a week ahead, and retention by dropping old ones (once a day)."""
        today = datetime.now(UTC).date()
        if not force and self.partition_day == today:
            return
        self.partition_day = today
        plain = conn.execute("select 1 from pg_partitioned_table p join pg_class c on c.oid = p.partrelid"
                             " where c.relname = 'trades'").fetchone()
        if not plain:
            return
        cutoff = today - timedelta(days=self.retention_days)
        for table in ("trades", "order_events", "book_snapshots"):
            try:
                with conn.transaction():
                    conn.execute("select ensure_daily_partitions(%s, %s, 9)", (table, today - timedelta(days=1)))
                    conn.execute("select drop_partitions_before(%s, %s)", (table, cutoff))
            except psycopg.errors.DatabaseError as error:
                if is_transient(error):
                    raise
                self.log.warning("partition maintenance failed", table=table, error=str(error).strip())

    # -- journals (trades, order events) ---------------------------------------------------------
    def _write_journal(self, conn: psycopg.Connection[Any], journal: Journal, rows: list[tuple[Any, ...]],
                       src: list[Message], candidates: list[Candidate], rejected: list[Rejected],
                       anomalies: list[Anomaly], done: Written) -> int:
        """Write a batch's trades or events: rows in sequence by COPY; candidates, and the rows of
        a COPY that hit a stored key or a rejected value, by comparison with the stored rows."""
        start = time.perf_counter()
        written = 0
        try:
            if rows:
                try:
                    with conn.transaction():
                        copy_rows(conn, journal.name, journal.written, rows)
                    written = len(rows)
                except DATA_ERRORS as error:
                    if is_transient(error):
                        raise
                    # Keys already stored (another writer of the same stream), or a value the
                    # database rejects: every row goes through the comparison, one by one.
                    self.log.warning("batch not copied: its rows are compared with the stored ones",
                                     table=journal.name, error=str(error).strip().splitlines()[0])
                    candidates = [Candidate((r[0], r[1]), r[:-1], r[-1], m) for r, m in zip(rows, src, strict=True)
                                  ] + candidates
            if candidates:
                written += self._write_candidates(conn, journal, candidates, rejected, anomalies, done)
        finally:
            DB_QUERY_SECONDS.labels(f"copy_{journal.name}").observe(time.perf_counter() - start)
        return written

    def _write_candidates(self, conn: psycopg.Connection[Any], journal: Journal, candidates: list[Candidate],
                          rejected: list[Rejected], anomalies: list[Anomaly], done: Written) -> int:
        # No other writer may add a key between the look-up and the insert (readers are not blocked).
        conn.execute(sql.SQL("lock table {} in share row exclusive mode").format(sql.Identifier(journal.name)))
        decided = classify(candidates, self._stored_rows(conn, journal, (c.key for c in candidates)))
        if decided.conflict is not None:
            raise journal_conflict(journal, *decided.conflict)
        for c in decided.duplicates:
            if not c.repeat:
                done.already_stored += 1
                continue
            done.duplicates[journal.topic] = done.duplicates.get(journal.topic, 0) + 1
            anomalies.append(Anomaly.at(c.source, journal.topic, c.key[0], "duplicate", c.expected, c.key[1]))
            self.log.warning("duplicate skipped", topic=journal.topic, market=c.key[0], got=c.key[1],
                             expected=c.expected)
        late = sum(1 for c in decided.insert if c.expected is not None)
        if late:
            done.late += late
            self.log.warning("records with an already-seen sequence value were not stored: written",
                             topic=journal.topic, count=late)
        return self._insert_rows(conn, journal, decided.insert, rejected)

    def _insert_rows(self, conn: psycopg.Connection[Any], journal: Journal, rows: list[Candidate],
                     rejected: list[Rejected]) -> int:
        """COPY rows known to be absent; one by one if the database rejects one of them."""
        if not rows:
            return 0
        values = [(*c.row, c.digest) for c in rows]
        try:
            with conn.transaction():
                copy_rows(conn, journal.name, journal.written, values)
            return len(values)
        except psycopg.errors.UniqueViolation as error:
            raise _collision(journal.name, error) from None
        except DATA_ERRORS as error:
            if is_transient(error):
                raise
        return self._insert_one_by_one(conn, journal.written, values, [c.source for c in rows], rejected)

    def _stored_rows(self, conn: psycopg.Connection[Any], journal: Journal,
                     keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], list[Stored]]:
        markets, values = zip(*sorted(set(keys)), strict=True)
        query = sql.SQL("select {}, record_digest from {} where ({}, {}) in (select * from unnest(%s::text[], %s::int8[]))"
                        ).format(sql.SQL(", ").join(map(sql.Identifier, journal.values.names)),
                                 sql.Identifier(journal.name), sql.Identifier("market"), sql.Identifier(journal.key))
        stored: dict[tuple[str, int], list[Stored]] = defaultdict(list)
        for row in conn.execute(query, (list(markets), list(values))):
            digest = row[-1]
            stored[(row[0], row[1])].append(Stored(comparable(row[:-1]), bytes(digest) if digest is not None else None))
        return stored

    # -- candles and snapshots -------------------------------------------------------------------
    def _insert_via_stage(self, conn: psycopg.Connection[Any], table: Table, rows: list[tuple[Any, ...]],
                          conflict: str, check: str | None = None) -> tuple[int, tuple[Any, ...] | None]:
        """Insert ``rows`` through a staging table with the ``conflict`` clause; ``check`` (a query
        over the stage, ``{stage}``) returns a staged row that contradicts the table, if any."""
        stage = f"_stage_{table.name}"
        conn.execute(sql.SQL("create temp table if not exists {} (like {} including defaults) on commit delete rows")
                     .format(sql.Identifier(stage), sql.Identifier(table.name)))
        copy_rows(conn, stage, table, rows)
        cols = sql.SQL(", ").join(map(sql.Identifier, table.names))
        cur = conn.execute(sql.SQL("insert into {} ({}) select {} from {} {}").format(
            sql.Identifier(table.name), cols, cols, sql.Identifier(stage), sql.SQL(conflict)))
        inserted = cur.rowcount
        contradiction = None
        if check is not None:
            contradiction = conn.execute(sql.SQL(check).format(stage=sql.Identifier(stage))).fetchone()
        conn.execute(sql.SQL("truncate {}").format(sql.Identifier(stage)))
        return inserted, contradiction

    def _write_candles(self, conn: psycopg.Connection[Any], batch: Batch, rejected: list[Rejected]) -> int:
        rows, src = list(batch.candles.values()), list(batch.candle_src.values())
        if not rows:
            return 0
        start = time.perf_counter()
        try:
            with conn.transaction():
                written, contradiction = self._insert_via_stage(conn, CANDLES_TABLE, rows, CANDLE_UPSERT, CANDLE_CHECK)
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
            return self._insert_one_by_one(conn, CANDLES_TABLE, rows, src, rejected, CANDLE_UPSERT)
        finally:
            DB_QUERY_SECONDS.labels("copy_candles").observe(time.perf_counter() - start)

    def _write_snapshots(self, conn: psycopg.Connection[Any], batch: Batch) -> int:
        if not batch.snapshots:
            return 0
        with conn.transaction():
            written, contradiction = self._insert_via_stage(conn, SNAPSHOTS_TABLE, batch.snapshots,
                                                            "on conflict do nothing", SNAPSHOT_CHECK)
        if contradiction is not None:
            market, book_seq, ts = contradiction
            raise RecordConflict(
                f"L2 snapshot {market} book_seq {book_seq} at {ts.isoformat()} replayed from md.book differs from the "
                "stored snapshot row: two histories of one book; the sink stops without writing its batch "
                "(`xchg db rebuild --yes` rebuilds the database from the topics)")
        return written

    # -- the last fallback -----------------------------------------------------------------------
    def _insert_one_by_one(self, conn: psycopg.Connection[Any], table: Table, rows: Sequence[tuple[Any, ...]],
                           src: Sequence[Message | None], rejected: list[Rejected], conflict: str = "") -> int:
        """Insert each row under its own savepoint; a row the database rejects goes to ``rejected``."""
        cols = sql.SQL(", ").join(map(sql.Identifier, table.names))
        marks = sql.SQL(", ").join(sql.SQL("%s::" + t) for t in table.types)
        stmt = sql.SQL("insert into {} ({}) values ({}) {}").format(sql.Identifier(table.name), cols, marks,
                                                                   sql.SQL(conflict))
        written = 0
        for row, message in zip(rows, src, strict=True):
            try:
                with conn.transaction():
                    written += conn.execute(stmt, row).rowcount
            except psycopg.errors.UniqueViolation as error:
                raise _collision(table.name, error) from None
            except DATA_ERRORS as error:
                if is_transient(error) or message is None:
                    raise
                rejected.append(Rejected(message, f"db_rejected:{type(error).__name__}",
                                         (error.diag.message_primary or str(error)).strip()))
        return written
