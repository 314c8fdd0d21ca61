"""Rows the database refuses for what they hold, and a stop during an outage: a value the database
cannot store (an index row past its size limit, SQLSTATE class 54, which psycopg reports as an
OperationalError) is dead-lettered with the reason while the sink goes on, and SIGTERM stops a
sink that is retrying a database outage within seconds."""

from __future__ import annotations

import random
import signal
import string
import time
from pathlib import Path

import psycopg
import pytest

from connectors.timescale.sink import is_data_error, is_transient
from streams.serde.topics import DLQ_SINK, TRADES
from streams.services.postgres import PostgresCluster
from streams.settings import load_settings
from tests.pipeline import fresh_namespace, wait_for
from tests.sink.conftest import Database, ServiceProcess, produce, random_trades, read_topic, rows, run_xchg

pytestmark = pytest.mark.timeout(240)


def test_a_row_past_the_index_limit_is_dead_lettered_and_the_rest_is_written(
        kafka_bootstrap: str, database: Database, unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"dfl-{unique}")
    trades = random_trades(random.Random(5), ["DF-A"], 30, 1_764_000_000_000)
    # Written to the topic directly: the engine would refuse this account (64 characters at most).
    # Random letters: incompressible, so the index row stays past btree's limit of ~2.7 KB.
    account = "".join(random.Random(1).choices(string.ascii_letters + string.digits, k=12_000))
    trades[10] = {**trades[10], "taker_account": account}
    produce(kafka_bootstrap, ns, TRADES, trades)
    done = run_xchg(["sink", "timescale", "--until-caught-up"], kafka_bootstrap, ns, database, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert rows(database.writer, "select count(*) from trades")[0][0] == 29
    dead = read_topic(kafka_bootstrap, ns, DLQ_SINK, decode=False)
    assert len(dead) == 1
    headers = dict(dead[0].headers() or [])
    assert headers["reason"].startswith(b"db_rejected:") and b"index row" in headers["detail"]


def test_sigterm_stops_a_sink_retrying_an_outage(kafka_bootstrap: str, database: Database, unique: str,
                                                 tmp_path: Path) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"dft-{unique}")
    produce(kafka_bootstrap, ns, TRADES, random_trades(random.Random(6), ["DT-A"], 200, 1_764_000_000_000))
    log = tmp_path / "sink.log"
    sink = ServiceProcess(["sink", "timescale"], kafka_bootstrap, ns, log, db=database).start()
    try:
        wait_for(lambda: rows(database.writer, "select count(*) from trades")[0][0] == 200, 60, "the sink to catch up")
        cluster = PostgresCluster(load_settings())
        assert cluster.down(mode="immediate")
        try:
            produce(kafka_bootstrap, ns, TRADES, random_trades(random.Random(7), ["DT-B"], 50, 1_764_000_000_000))
            wait_for(lambda: "database circuit open" in log.read_text(), 60, "the sink to notice the outage")
            sink.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            started = time.monotonic()
            code = sink.wait(30)
            assert time.monotonic() - started < 5, f"SIGTERM took {time.monotonic() - started:.1f}s"
            assert code == 0, log.read_text()[-2000:]  # a clean stop: the offsets are with the rows
        finally:
            cluster.up()
    finally:
        sink.stop()


def test_the_data_classes_are_not_outages() -> None:
    limit = psycopg.errors.ProgramLimitExceeded("index row size 10016 exceeds btree version 4 maximum 2704")
    assert isinstance(limit, psycopg.OperationalError)  # why it was retried for ever
    assert not is_transient(limit) and not is_data_error(psycopg.OperationalError("server closed the connection"))
    assert is_transient(psycopg.OperationalError("server closed the connection"))
