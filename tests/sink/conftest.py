"""Fixtures of the sink and candle tests: a fresh database per test (owned by the writer, readable
by the analyst, migrated) and helpers to produce trades and read topics."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from psycopg import sql

from connectors.timescale.migrations import migrate
from streams.runtime.clients import producer_config
from streams.runtime.namespace import Namespace
from streams.runtime.reader import read_range, standalone_consumer, watermarks
from streams.serde.codec import Codec
from streams.serde.topics import TRADES
from streams.services.postgres import PostgresCluster
from streams.settings import PROJECT_ROOT, load_settings
from tests.pipeline import XCHG
from tests.services import Endpoint


@dataclass(frozen=True)
class Database:
    name: str
    writer: str
    analyst: str
    admin: str


def _dsn(base: str, dbname: str) -> str:
    head, _, _ = base.rpartition("/")
    return f"{head}/{dbname}"


def create_database(name: str) -> Database:
    settings = load_settings()
    cluster = PostgresCluster(settings)
    writer, analyst = settings.pg_writer_user, settings.pg_analyst_user
    with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(name), sql.Identifier(writer)))
        conn.execute(sql.SQL("grant connect on database {} to {}").format(sql.Identifier(name), sql.Identifier(analyst)))
    with psycopg.connect(cluster.admin_conninfo(name), autocommit=True) as conn:
        conn.execute("revoke create on schema public from public")
        conn.execute(sql.SQL("create schema xchg authorization {}").format(sql.Identifier(writer)))
        conn.execute(sql.SQL("grant usage on schema xchg to {}").format(sql.Identifier(analyst)))
        conn.execute(sql.SQL("alter default privileges for role {} in schema xchg grant select on tables to {}")
                     .format(sql.Identifier(writer), sql.Identifier(analyst)))
    db = Database(name, _dsn(settings.writer_dsn(), name), _dsn(settings.analyst_dsn(), name),
                  cluster.admin_conninfo(name))
    migrate(db.writer)
    return db


def drop_database(name: str) -> None:
    cluster = PostgresCluster(load_settings())
    with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def database(postgres: Endpoint, unique: str) -> Iterator[Database]:
    if postgres.mode != "local":
        pytest.skip("per-test databases need the project's local cluster")
    db = create_database(f"xchg_t_{unique}")
    try:
        yield db
    finally:
        drop_database(db.name)


def random_trades(rng: random.Random, markets: list[str], per_market: int, start_ms: int,
                  max_step_ms: int = 90_000) -> list[dict[str, Any]]:
    """Trades with gap-free per-market ids and non-decreasing times (as the engine produces)."""
    out: list[dict[str, Any]] = []
    for market in markets:
        ts = start_ms + rng.randint(0, 59_999)
        for trade_id in range(1, per_market + 1):
            ts += rng.choice((0, rng.randint(0, 5_000), rng.randint(0, max_step_ms)))
            out.append({
                "market": market, "trade_id": trade_id, "seq": trade_id * 3, "ts": ts,
                "price": rng.randint(90_00, 110_00), "qty": rng.randint(1, 10_000),
                "maker_order_id": f"m{trade_id}", "maker_account": f"acct{rng.randint(0, 9)}",
                "taker_order_id": f"t{trade_id}", "taker_account": f"acct{rng.randint(0, 9)}",
                "taker_side": rng.choice(("buy", "sell")), "command_id": f"c{trade_id}",
                "input_partition": 0, "input_offset": trade_id,
            })
    return out


def produce(bootstrap: str, ns: Namespace, logical: str, records: list[dict[str, Any]],
            codec: Codec | None = None) -> None:
    codec = codec or Codec()
    producer = Producer(producer_config(bootstrap))
    for i, record in enumerate(records):
        producer.produce(ns(logical), key=record["market"].encode(), value=codec.encode(logical, record))
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0


def produce_raw(bootstrap: str, ns: Namespace, logical: str, key: bytes, value: bytes) -> None:
    producer = Producer(producer_config(bootstrap))
    producer.produce(ns(logical), key=key, value=value)
    assert producer.flush(30) == 0


def read_topic(bootstrap: str, ns: Namespace, logical: str, partitions: int = 4,
               decode: bool = True) -> list[Any]:
    codec = Codec()
    consumer = standalone_consumer(bootstrap)
    out: list[Any] = []
    try:
        for p in range(partitions):
            low, high = watermarks(consumer, ns(logical), p)
            for m in read_range(consumer, ns(logical), p, low, high):
                out.append(codec.decode(logical, m.value()) if decode else m)
    finally:
        consumer.close()
    return out


__all__ = ["TRADES", "Database", "ServiceProcess", "create_database", "drop_database", "produce", "produce_raw",
           "random_trades", "read_topic", "scalar", "try_scalar"]


class ServiceProcess:
    """One ``xchg sink timescale`` / ``xchg marketdata run`` OS process in a namespace and database."""

    def __init__(self, argv: list[str], bootstrap: str, ns: Namespace, log_path: Path,
                 db: Database | None = None, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self.env = {
            **os.environ,
            "EXCHANGE_KAFKA_BOOTSTRAP": bootstrap,
            "EXCHANGE_TOPIC_PREFIX": ns.prefix,
            **({"EXCHANGE_DATABASE_URL": db.writer} if db is not None else {}),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*XCHG, *self.argv], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=PROJECT_ROOT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def scalar(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def try_scalar(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    """``scalar``, or None while the database is unreachable."""
    try:
        return scalar(dsn, query, params)
    except psycopg.OperationalError:
        return None


# -- helpers of the stream-identity and rebuild-safety tests -----------------------------------------


def random_events(rng: random.Random, markets: list[str], per_market: int, start_ms: int,
                  max_step_ms: int = 60_000) -> list[dict[str, Any]]:
    """``orders.events`` records (OrderCancelled bodies) with gap-free per-market seq from 1 and
    non-decreasing times."""
    out: list[dict[str, Any]] = []
    for market in markets:
        ts = start_ms + rng.randint(0, 59_999)
        for seq in range(1, per_market + 1):
            ts += rng.choice((0, rng.randint(0, max_step_ms)))
            out.append({
                "market": market, "seq": seq, "ts": ts, "command_id": f"c{seq}-{rng.randint(0, 10**9)}",
                "input_partition": 0, "input_offset": seq,
                "body": ("xchg.v1.OrderCancelled", {"order_id": f"o{seq}", "account": f"acct{rng.randint(0, 9)}",
                                                    "qty": rng.randint(1, 10_000), "reason": "user"}),
            })
    return out


def book_deltas(rng: random.Random, markets: list[str], per_market: int, start_ms: int,
                step_ms: int = 20_000) -> list[dict[str, Any]]:
    """``md.book`` records as the engine publishes them: a full snapshot first, then chained deltas."""
    out: list[dict[str, Any]] = []
    for market in markets:
        ts, prev = start_ms, 0
        for i in range(per_market):
            ts += rng.randint(0, step_ms)
            book_seq = prev + rng.randint(1, 5)
            changes = [{"side": rng.choice(("buy", "sell")), "price": rng.randint(90, 110) * 100,
                        "qty": rng.choice((0, rng.randint(1, 1000)))} for _ in range(rng.randint(1, 4))]
            unique_changes = list({(c["side"], c["price"]): c for c in changes}.values())
            out.append({"market": market, "book_seq": book_seq, "prev_book_seq": prev, "snapshot": i == 0,
                        "seq": book_seq, "ts": ts, "input_partition": 0, "input_offset": i,
                        "changes": unique_changes})
            prev = book_seq
    return out


def produce_at(bootstrap: str, ns: Namespace, logical: str, records: list[dict[str, Any]],
               timestamp: str = "ts") -> None:
    """``produce``, with each record's Kafka timestamp (CreateTime) set to its event time field."""
    codec = Codec()
    producer = Producer(producer_config(bootstrap))
    for i, record in enumerate(records):
        producer.produce(ns(logical), key=record["market"].encode(), value=codec.encode(logical, record),
                         timestamp=record[timestamp])
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0


def run_xchg(argv: list[str], bootstrap: str, ns: Namespace, db: Database, env: dict[str, str] | None = None,
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """One ``xchg`` command to completion in ``ns`` and ``db``."""
    full_env = {**os.environ, "EXCHANGE_KAFKA_BOOTSTRAP": bootstrap, "EXCHANGE_TOPIC_PREFIX": ns.prefix,
                "EXCHANGE_DATABASE_URL": db.writer, **(env or {})}
    return subprocess.run([*XCHG, *argv], env=full_env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one ``error: ...`` line a failed command printed (and no traceback)."""
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


def rows(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        return conn.execute(query, params).fetchall()
