"""``xchg db rebuild``: rebuild the analytics tables from the topics, then verify them against the topic.

From the beginning: the sink's tables and stored offsets are emptied and the sink runs from offset 0
until caught up. From a timestamp: rows with event time >= the timestamp are deleted (candles whose
window starts at or after it) and the stored offsets of every input partition are set to the first
record the broker appended at or after it; records between that offset and the stored rows that
already exist (event time before the cut) are skipped by the sink (``skip_before_ms``).

Verification reads ``trades`` (committed records, from the same start) and compares the number of
rows and the exact set of (market, trade_id) with the table; ``orders.events`` is compared by count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from connectors.timescale.sink import INPUT_TOPICS, SinkConfig, TimescaleSink
from streams.runtime.clients import consumer_config
from streams.runtime.reader import read_range, watermarks
from streams.serde.codec import Codec, DecodeError
from streams.serde.topics import ORDERS_EVENTS, TRADES

TABLES = ("trades", "order_events", "candles", "book_snapshots")


@dataclass
class RebuildReport:
    records_total: int = 0
    records: int = 0
    topic_trades: int = 0
    db_trades: int = 0
    missing: list[tuple[str, int]] = field(default_factory=list)
    unexpected: list[tuple[str, int]] = field(default_factory=list)
    duplicates_in_db: int = 0
    topic_events: int = 0
    db_events: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (not self.missing and not self.unexpected and not self.duplicates_in_db
                and self.topic_events == self.db_events)


def _start_offsets(consumer: Consumer, config: SinkConfig, since: datetime | None) -> dict[tuple[str, int], int]:
    offsets: dict[tuple[str, int], int] = {}
    for logical in INPUT_TOPICS:
        physical = config.namespace(logical)
        meta = consumer.list_topics(physical, timeout=30).topics[physical]
        tps = [TopicPartition(physical, p, int(since.timestamp() * 1000) if since else OFFSET_BEGINNING)
               for p in sorted(meta.partitions)]
        if since is None:
            for tp in tps:
                offsets[(physical, tp.partition)] = watermarks(consumer, physical, tp.partition)[0]
        else:
            for tp in consumer.offsets_for_times(tps, timeout=30):
                high = watermarks(consumer, physical, tp.partition)[1]
                offsets[(physical, tp.partition)] = high if tp.offset < 0 else tp.offset
    return offsets


def reset(config: SinkConfig, offsets: dict[tuple[str, int], int], since: datetime | None) -> None:
    with psycopg.connect(config.dsn, autocommit=True) as conn, conn.transaction():
        if since is None:
            conn.execute("truncate trades, order_events, candles, book_snapshots")
            conn.execute("delete from sink_book_state where consumer = %s", (config.name,))
        else:
            for table in ("trades", "order_events", "book_snapshots"):
                conn.execute(f"delete from {table} where ts >= %s", (since,))
            conn.execute("delete from candles where window_start >= %s", (since,))
        conn.execute("delete from kafka_offsets where consumer = %s", (config.name,))
        with conn.cursor() as cur:
            cur.executemany("insert into kafka_offsets (consumer, topic, partition, next_offset) values (%s, %s, %s, %s)",
                            [(config.name, t, p, o) for (t, p), o in sorted(offsets.items())])


def verify(config: SinkConfig, offsets: dict[tuple[str, int], int], since: datetime | None,
           report: RebuildReport) -> None:
    codec = Codec(schema_registry_url=config.schema_registry_url)
    consumer = Consumer(consumer_config(config.bootstrap, f"{config.name}-verify"))
    since_ms = int(since.timestamp() * 1000) if since else None
    topic_ids: set[tuple[str, int]] = set()
    try:
        for logical in (TRADES, ORDERS_EVENTS):
            physical = config.namespace(logical)
            for (topic, partition), start in sorted(offsets.items()):
                if topic != physical:
                    continue
                high = watermarks(consumer, topic, partition)[1]
                for message in read_range(consumer, topic, partition, start, high):
                    try:
                        value = codec.decode(logical, message.value())
                    except DecodeError:
                        continue
                    if since_ms is not None and value["ts"] < since_ms:
                        continue
                    if logical == TRADES:
                        topic_ids.add((value["market"], value["trade_id"]))
                    else:
                        report.topic_events += 1
    finally:
        consumer.close()
    with psycopg.connect(config.dsn) as conn:
        where, params = ("where ts >= %s", (since,)) if since else ("", ())
        rows = conn.execute(f"select market, trade_id from trades {where}", params).fetchall()
        events = conn.execute(f"select count(*) from order_events {where}", params).fetchone()
    db_ids = {(m, t) for m, t in rows}
    report.topic_trades, report.db_trades = len(topic_ids), len(rows)
    report.duplicates_in_db = len(rows) - len(db_ids)
    report.missing = sorted(topic_ids - db_ids)[:20]
    report.unexpected = sorted(db_ids - topic_ids)[:20]
    report.db_events = int(events[0]) if events else 0


def rebuild(config: SinkConfig, since: datetime | None = None,
            on_start: Callable[[int], Any] | None = None, on_progress: Callable[[int], Any] | None = None,
            markets: list[tuple[str, str, str, int, int, str, str]] | None = None) -> RebuildReport:
    import time

    started = time.monotonic()
    report = RebuildReport()
    probe = Consumer(consumer_config(config.bootstrap, f"{config.name}-rebuild"))
    try:
        offsets = _start_offsets(probe, config, since)
        report.records_total = sum(watermarks(probe, t, p)[1] - o for (t, p), o in offsets.items())
    finally:
        probe.close()
    if on_start is not None:
        on_start(report.records_total)
    reset(config, offsets, since)
    sink_config = SinkConfig(**{**config.__dict__, "until_caught_up": True, "idle_exit_s": None, "max_runtime_s": None,
                                "skip_before_ms": int(since.timestamp() * 1000) if since else None})
    sink = TimescaleSink(sink_config, markets=markets or ())
    stats = sink.run(on_batch=on_progress)
    report.records = stats.records
    verify(config, offsets, since, report)
    report.seconds = time.monotonic() - started
    return report


def run_cli(settings: Any, since_text: str | None, yes: bool, console: Any) -> None:
    """``xchg db rebuild`` with a rich progress bar; exits non-zero when verification fails."""
    from datetime import UTC

    import typer
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from connectors.timescale.sink import market_rows
    from streams.services.kafka import KafkaCluster

    since = None
    if since_text:
        try:
            since = datetime.fromisoformat(since_text)
        except ValueError:
            console.print(f"[red]error:[/red] --since {since_text!r} is not an ISO 8601 time")
            raise typer.Exit(2) from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    if not yes:
        typer.confirm(f"delete the analytics rows {'from ' + since.isoformat() if since else 'of every time'}"
                      " and rebuild them from the topics?", abort=True)
    config = SinkConfig(bootstrap=KafkaCluster(settings).bootstrap_servers(), dsn=settings.writer_dsn(),
                        namespace=settings.namespace, name=settings.sink_identity, batch_size=settings.sink_batch_size,
                        linger_ms=settings.sink_linger_ms, book_snapshot_interval_s=settings.book_snapshot_interval_s,
                        retention_days=settings.retention_days, schema_registry_url=settings.schema_registry_url)
    with Progress(TextColumn("rebuilding"), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("rebuild", total=None)
        report = rebuild(config, since,
                         on_start=lambda total: progress.update(task, total=total),
                         on_progress=lambda n: progress.advance(task, n),
                         markets=market_rows(settings.markets_file))
        progress.update(task, completed=report.records_total)
    console.print(f"records read: {report.records} of {report.records_total} in {report.seconds:.1f} s")
    console.print(f"trades: topic {report.topic_trades}, table {report.db_trades}; "
                  f"order events: topic {report.topic_events}, table {report.db_events}")
    if not report.ok:
        console.print(f"[red]verification failed:[/red] missing {report.missing[:5]} unexpected "
                      f"{report.unexpected[:5]} duplicates {report.duplicates_in_db}")
        raise typer.Exit(1)
    console.print("[green]verified:[/green] row counts and trade ids match the topic")
