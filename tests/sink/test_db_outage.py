"""Database failure: PostgreSQL stops (immediate mode) in the middle of ingestion while trades keep
coming; the sink opens its circuit, retries with backoff and catches up with nothing lost or
duplicated once the database is back. The catch-up time is printed."""

from __future__ import annotations

import random
import socket
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from streams.serde.topics import TRADES
from streams.services.postgres import PostgresCluster
from streams.settings import load_settings
from tests.pipeline import fresh_namespace, wait_for
from tests.sink.conftest import Database, ServiceProcess, produce, random_trades, read_topic, try_scalar

pytestmark = pytest.mark.timeout(240)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def circuit_state(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("xchg_sink_circuit_state "):
            return float(line.split()[1])
    return None


def test_database_outage_mid_ingestion(kafka_bootstrap: str, database: Database, unique: str,
                                       tmp_path: Path) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"out-{unique}")
    trades = random_trades(random.Random(11), ["OUT-A", "OUT-B", "OUT-C"], 12_000, 1_764_000_000_000)
    random.Random(1).shuffle(trades)  # interleave markets; per-market order is restored below
    trades.sort(key=lambda t: t["trade_id"])
    chunks = [trades[i:i + 1000] for i in range(0, len(trades), 1000)]
    produced = [0]
    stop_producing = threading.Event()

    def producer() -> None:
        for chunk in chunks:
            if stop_producing.is_set():
                return
            produce(kafka_bootstrap, ns, TRADES, chunk)
            produced[0] += len(chunk)
            time.sleep(0.1)  # a steady trickle of trades (pacing the load, not synchronising)

    port = free_port()
    sink = ServiceProcess(["sink", "timescale"], kafka_bootstrap, ns, tmp_path / "sink.log", database,
                          env={"EXCHANGE_METRICS_PORT": str(port)})
    cluster = PostgresCluster(load_settings())
    count = "select count(*) from trades"
    thread = threading.Thread(target=producer, daemon=True)
    sink.start()
    try:
        thread.start()
        wait_for(lambda: (try_scalar(database.writer, count) or 0) >= 5_000, 60, "ingestion to be under way")
        assert cluster.down(mode="immediate")
        at_stop = produced[0]
        try:
            wait_for(lambda: circuit_state(port) in (1.0, 2.0), 30, "the circuit to open")
            thread.join(120)  # every remaining trade is produced while the database is down
            assert not thread.is_alive() and produced[0] == len(trades)
            assert sink.alive(), sink.log()[-2000:]
        finally:
            log_while_down = sink.log()
            cluster.up()
        back = time.monotonic()
        total = len(trades)
        wait_for(lambda: try_scalar(database.writer, count) == total, 60, "the sink to catch up")
        catch_up = time.monotonic() - back
        print(f"\nDB outage: caught up {total} trades {catch_up:.2f} s after PostgreSQL returned "
              f"({total - at_stop} produced during or after the outage)")
        wait_for(lambda: circuit_state(port) == 0.0, 30, "the circuit to close")
    finally:
        stop_producing.set()
        sink.stop()
        if not cluster.running():
            cluster.up()
    assert catch_up < 30
    log = sink.log()
    assert "database circuit open" in log and "database circuit closed" in log
    # The circuit closes only on an answer from the database, never while it is down.
    assert "database circuit open" in log_while_down and "database circuit closed" not in log_while_down
    with psycopg.connect(database.writer) as conn:
        rows = conn.execute("select market, trade_id from trades").fetchall()
        anomalies = conn.execute("select count(*) from sink_anomalies").fetchone()
    assert len(rows) == len(set(rows)) == len(trades)
    assert sorted(rows) == sorted((r["market"], r["trade_id"]) for r in read_topic(kafka_bootstrap, ns, TRADES))
    assert anomalies == (0,)
