"""``xchg db rebuild``: rebuild from the beginning and from a timestamp, verified against the topic."""

from __future__ import annotations

import os
import random
import subprocess
from datetime import UTC, datetime

import psycopg
import pytest

from connectors.timescale.sink import SinkConfig, TimescaleSink
from streams.serde.topics import TRADES
from streams.settings import PROJECT_ROOT
from tests.pipeline import XCHG, fresh_namespace
from tests.sink.conftest import Database, produce, random_trades

pytestmark = pytest.mark.timeout(180)


def trade_rows(dsn: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("select * from trades order by market, trade_id").fetchall()


def test_rebuild_all_and_since(kafka_bootstrap: str, database: Database, unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"rb-{unique}")
    trades = random_trades(random.Random(5), ["RB-A", "RB-B"], 2_000, 1_764_000_000_000)
    produce(kafka_bootstrap, ns, TRADES, trades)
    TimescaleSink(SinkConfig(bootstrap=kafka_bootstrap, dsn=database.writer, namespace=ns,
                             until_caught_up=True)).run()
    before = trade_rows(database.writer)
    assert len(before) == len(trades)
    with psycopg.connect(database.writer, autocommit=True) as conn:  # damage the table: rebuild repairs it
        conn.execute("delete from trades where trade_id % 7 = 0")
        conn.execute("update kafka_offsets set next_offset = 0")

    env = {**os.environ, "EXCHANGE_KAFKA_BOOTSTRAP": kafka_bootstrap, "EXCHANGE_TOPIC_PREFIX": ns.prefix,
           "EXCHANGE_DATABASE_URL": database.writer}
    done = subprocess.run([*XCHG, "db", "rebuild", "--yes"], env=env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified" in done.stdout and f"trades: topic {len(trades)}, table {len(trades)}" in done.stdout
    assert trade_rows(database.writer) == before

    # The broker's append times are all "now": rebuilding since a minute ago re-reads every record
    # and deletes the rows whose event time is after the cut (in 2025 for these trades).
    since = datetime.fromtimestamp(trades[len(trades) // 4]["ts"] / 1000, tz=UTC)
    done = subprocess.run([*XCHG, "db", "rebuild", "--yes", "--since", since.isoformat()], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified" in done.stdout
    assert trade_rows(database.writer) == before
    with psycopg.connect(database.writer) as conn:
        assert conn.execute("select count(*) from sink_anomalies").fetchone() == (0,)
