"""``xchg bench sink``: end-to-end sink throughput against raw COPY into the same database, and the
candle processor's speed. Prints one JSON line (see ``streams/cli/sink.py``).

- ``rows_per_second``: trades produced to a fresh namespace's ``trades`` topic beforehand, then the
  sink (``TimescaleSink``, default batch size) timed from start to caught up (decode, sequence
  check, COPY, offsets in the same transaction) into a scratch database.
- ``copy_rows_per_second``: the same rows, already built as Python tuples, COPYed (binary, batches of
  the sink's size, one transaction each) into the same ``trades`` table after a truncate: the floor
  the sink is compared with; ``ratio`` = rows_per_second / copy_rows_per_second.
- Both are measured ``rounds`` times (a fresh scratch database and sink each round, the floor right
  after the sink in the same database) and reported as medians, with each round's pair: on a
  shared two-core machine single runs of either vary by ±30 %.
- ``candle_trades_per_second``: ``candle_trades`` trades through ``xchg marketdata run`` (a real
  faust worker process), measured between the broker timestamps of the first and the last candle
  update it published (start-up excluded).

The scratch database (local cluster) and the namespace's topics are removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from psycopg import sql

from connectors.timescale.migrations import migrate
from connectors.timescale.sink import SinkConfig, TimescaleSink
from connectors.timescale.tables import TRADES_TABLE
from streams.runtime.clients import producer_config
from streams.runtime.namespace import Namespace
from streams.runtime.reader import read_range, standalone_consumer, watermarks
from streams.runtime.topic_admin import TopicAdmin, load_topic_file
from streams.serde.codec import Codec
from streams.serde.topics import MD_CANDLES, TRADES
from streams.settings import PROJECT_ROOT, Settings

MARKETS = ("BENCH-A", "BENCH-B", "BENCH-C", "BENCH-D")


def _trades(n: int, seed: int = 42) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    ts = int(time.time() * 1000) - 3_600_000
    ids = dict.fromkeys(MARKETS, 0)
    out = []
    for i in range(n):
        market = MARKETS[i % len(MARKETS)]
        ids[market] += 1
        ts += rng.randint(0, 20)
        out.append({"market": market, "trade_id": ids[market], "seq": ids[market] * 3, "ts": ts,
                    "price": rng.randint(9_000_00, 11_000_00), "qty": rng.randint(1, 100_000),
                    "maker_order_id": f"m{i}", "maker_account": f"acct{rng.randint(0, 199):03d}",
                    "taker_order_id": f"t{i}", "taker_account": f"acct{rng.randint(0, 199):03d}",
                    "taker_side": "buy" if i % 2 else "sell", "command_id": f"c{i}",
                    "input_partition": 0, "input_offset": i})
    return out


def _produce(bootstrap: str, topic: str, records: list[dict[str, Any]], codec: Codec) -> None:
    overrides: dict[str, Any] = {"linger.ms": 20, "batch.num.messages": 10000}
    producer = Producer(producer_config(bootstrap, None, **overrides))
    for i, record in enumerate(records):
        key, value = record["market"].encode(), codec.encode(TRADES, record)
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        if i % 5000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("bench: trades not acknowledged by the broker")


def _scratch_database(settings: Settings, name: str) -> str:
    """A migrated scratch database on the project's cluster (writer DSN)."""
    from streams.services.postgres import PostgresCluster

    cluster = PostgresCluster(settings)
    writer = settings.pg_writer_user
    with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(name), sql.Identifier(writer)))
    with psycopg.connect(cluster.admin_conninfo(name), autocommit=True) as conn:
        conn.execute(sql.SQL("create schema xchg authorization {}").format(sql.Identifier(writer)))
    dsn = settings.writer_dsn().rpartition("/")[0] + "/" + name
    migrate(dsn)
    return dsn


def _drop_database(settings: Settings, name: str) -> None:
    from streams.services.postgres import PostgresCluster

    with psycopg.connect(PostgresCluster(settings).admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _copy_floor(dsn: str, records: list[dict[str, Any]], batch: int) -> float:
    rows = [(r["market"], r["trade_id"], datetime.fromtimestamp(r["ts"] / 1000, tz=UTC), r["seq"], r["price"],
             r["qty"], r["maker_order_id"], r["maker_account"], r["taker_order_id"], r["taker_account"],
             r["taker_side"]) for r in records]
    stmt = sql.SQL("copy trades ({}) from stdin (format binary)").format(
        sql.SQL(", ").join(map(sql.Identifier, TRADES_TABLE.names)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("truncate trades")
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            with conn.transaction(), conn.cursor() as cur, cur.copy(stmt) as copy:
                copy.set_types(list(TRADES_TABLE.types))
                for row in rows[i:i + batch]:
                    copy.write_row(row)
        return len(rows) / (time.perf_counter() - start)


def _candle_rate(settings: Settings, bootstrap: str, n: int, codec: Codec) -> float:
    ns = Namespace(f"bench-md-{uuid.uuid4().hex[:8]}.")
    TopicAdmin(bootstrap).apply(load_topic_file(settings.topics_file, ns.prefix))
    try:
        _produce(bootstrap, ns(TRADES), _trades(n, seed=7), codec)
        env = {**os.environ, "EXCHANGE_KAFKA_BOOTSTRAP": bootstrap, "EXCHANGE_TOPIC_PREFIX": ns.prefix}
        subprocess.run([sys.executable, "-m", "streams.cli", "marketdata", "run", "--idle-exit", "2"], env=env,
                       cwd=PROJECT_ROOT, check=True, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first, last = None, None
        consumer = standalone_consumer(bootstrap)
        try:
            for p in range(4):
                low, high = watermarks(consumer, ns(MD_CANDLES), p)
                for m in read_range(consumer, ns(MD_CANDLES), p, low, high):
                    stamp = m.timestamp()[1]
                    first = stamp if first is None else min(first, stamp)
                    last = stamp if last is None else max(last, stamp)
        finally:
            consumer.close()
        if first is None or last is None:
            raise RuntimeError("bench: the candle processor published nothing")
        return n / max((last - first) / 1000, 0.001)
    finally:
        _delete_topics(bootstrap, ns)


def _delete_topics(bootstrap: str, ns: Namespace) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(ns.prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best-effort clean-up of scratch topics
                future.result()


def _round(settings: Settings, bootstrap: str, ns: Namespace, codec: Codec, records: list[dict[str, Any]],
           tag: str) -> tuple[float, float]:
    """One sink run from the start of the topic into a fresh database, then the COPY floor there."""
    db_name = f"xchg_bench_{tag}"
    dsn = _scratch_database(settings, db_name) if settings.local_postgres else settings.writer_dsn()
    try:
        config = SinkConfig(bootstrap=bootstrap, dsn=dsn, namespace=ns, name=f"bench-{tag}",
                            batch_size=settings.sink_batch_size, linger_ms=settings.sink_linger_ms,
                            until_caught_up=True)
        sink = TimescaleSink(config, codec)
        start = time.perf_counter()
        stats = sink.run()
        elapsed = time.perf_counter() - start
        if stats.rows["trades"] != len(records):
            raise RuntimeError(f"bench: the sink wrote {stats.rows['trades']} of {len(records)} trades")
        copy_rate = _copy_floor(dsn, records, config.batch_size) if settings.local_postgres else float("nan")
    finally:
        if settings.local_postgres:
            _drop_database(settings, db_name)
    return len(records) / elapsed, copy_rate


def run(settings: Settings, trades: int, candle_trades: int, rounds: int = 3) -> dict[str, Any]:

    bootstrap = settings.bootstrap_servers
    codec = Codec(schema_registry_url=settings.schema_registry_url)
    tag = uuid.uuid4().hex[:8]
    ns = Namespace(f"bench-sink-{tag}.")
    TopicAdmin(bootstrap).apply(load_topic_file(settings.topics_file, ns.prefix))
    records = _trades(trades)
    rounds_out: list[tuple[float, float]] = []
    try:
        _produce(bootstrap, ns(TRADES), records, codec)
        for round_no in range(rounds):
            rounds_out.append(_round(settings, bootstrap, ns, codec, records, f"{tag}_{round_no}"))
    finally:
        _delete_topics(bootstrap, ns)
    candle_rate = _candle_rate(settings, bootstrap, candle_trades, codec)
    rows_per_second = statistics.median(r for r, _ in rounds_out)
    copy_rate = statistics.median(c for _, c in rounds_out)
    return {
        "trades": trades,
        "rounds": [{"rows_per_second": round(r), "copy_rows_per_second": round(c)} for r, c in rounds_out],
        "rows_per_second": round(rows_per_second),
        "copy_rows_per_second": round(copy_rate),
        "ratio": round(rows_per_second / copy_rate, 3),
        "candle_trades": candle_trades,
        "candle_trades_per_second": round(candle_rate),
    }
