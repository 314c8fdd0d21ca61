"""The candle worker on hostile and broken paths, as a real ``xchg marketdata run`` process: a
crashing agent ends the process non-zero, a trade that would overflow a candle is dead-lettered
while the other markets flow on, and transaction markers are not mistaken for lost records."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streams.runtime.clients import producer_config
from streams.serde.codec import Codec
from streams.serde.topics import DLQ_MARKETDATA, MD_CANDLES, TRADES
from tests.pipeline import fresh_namespace
from tests.sink.conftest import ServiceProcess, produce, random_trades, read_topic

pytestmark = pytest.mark.integration
START = int(datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp() * 1000)


def test_a_crashing_agent_ends_the_worker_non_zero(kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"mdc-{unique}")
    produce(kafka_bootstrap, ns, TRADES, random_trades(random.Random(1), ["CR-A"], 20, START))
    log = tmp_path / "marketdata.log"
    worker = ServiceProcess(["marketdata", "run", "--idle-exit", "30"], kafka_bootstrap, ns, log,
                            env={"EXCHANGE_FAULT_POINT": "candle-fold:5"}).start()
    code = worker.wait(120)
    text = log.read_text()
    assert code != 0, text[-3000:]
    assert "candle agent crashed" in text and "injected fault at candle-fold" in text


def test_an_overflowing_trade_is_dead_lettered_and_the_rest_flows(kafka_bootstrap: str, unique: str,
                                                                  tmp_path: Path) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"mdo-{unique}")
    big = 2**62 + 1  # two of these in one window pass 2^63 - 1
    hostile = [
        {**t, "qty": big} for t in random_trades(random.Random(2), ["OV-A"], 2, START, max_step_ms=10)
    ]
    normal = random_trades(random.Random(3), ["OV-B"], 50, START)
    produce(kafka_bootstrap, ns, TRADES, hostile + normal)
    log = tmp_path / "marketdata.log"
    worker = ServiceProcess(["marketdata", "run", "--idle-exit", "3"], kafka_bootstrap, ns, log).start()
    assert worker.wait(180) == 0, log.read_text()[-3000:]

    dead = read_topic(kafka_bootstrap, ns, DLQ_MARKETDATA, decode=False)
    assert len(dead) == 1
    headers = dict(dead[0].headers() or [])
    assert headers["xchg.error.reason"] == b"candle_overflow" and b"volume" in headers["xchg.error.detail"]
    assert Codec().decode(TRADES, dead[0].value())["trade_id"] == 2
    candles = read_topic(kafka_bootstrap, ns, MD_CANDLES)
    first = [c for c in candles if c["market"] == "OV-A" and c["interval"] == "1m"]
    assert first and max(c["volume"] for c in first) == big  # the first trade counted, the second not
    assert max(c["last_trade_id"] for c in candles if c["market"] == "OV-B") == 50


def test_transaction_markers_are_not_lost_records(kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"mdt-{unique}")
    codec = Codec()
    producer = Producer(producer_config(kafka_bootstrap, f"mdt-{uuid.uuid4().hex[:8]}"))
    producer.init_transactions(30)
    trades = random_trades(random.Random(4), ["TX-A"], 60, START)
    for i in range(0, len(trades), 3):  # 20 transactions: a marker after every third trade
        producer.begin_transaction()
        for trade in trades[i:i + 3]:
            producer.produce(ns(TRADES), key=b"TX-A", value=codec.encode(TRADES, trade))
        producer.commit_transaction(30)
    log = tmp_path / "marketdata.log"
    worker = ServiceProcess(["marketdata", "run", "--idle-exit", "3"], kafka_bootstrap, ns, log).start()
    assert worker.wait(180) == 0, log.read_text()[-3000:]
    assert "folding records past the flushed position" not in log.read_text()
    candles = read_topic(kafka_bootstrap, ns, MD_CANDLES)
    assert max(c["last_trade_id"] for c in candles) == 60


def test_trades_of_an_aborted_transaction_are_not_counted(kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"mda-{unique}")
    codec = Codec()
    producer = Producer(producer_config(kafka_bootstrap, f"mda-{uuid.uuid4().hex[:8]}"))
    producer.init_transactions(30)
    trades = random_trades(random.Random(5), ["AB-A"], 20, START)
    aborted = [{**t, "qty": t["qty"] * 1000} for t in trades[10:]]  # an engine that crashed mid-transaction
    for batch, commit in ((trades[:10], True), (aborted, False), (trades[10:], True)):
        producer.begin_transaction()
        for trade in batch:
            producer.produce(ns(TRADES), key=b"AB-A", value=codec.encode(TRADES, trade))
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)
            producer.abort_transaction(30)
    log = tmp_path / "marketdata.log"
    worker = ServiceProcess(["marketdata", "run", "--idle-exit", "3"], kafka_bootstrap, ns, log).start()
    assert worker.wait(180) == 0, log.read_text()[-3000:]
    day = [c for c in read_topic(kafka_bootstrap, ns, MD_CANDLES) if c["interval"] == "1d"]
    assert max(c["volume"] for c in day) == sum(t["qty"] for t in trades)
