"""The ticker processor as a real ``xchg ticker run`` process on the real broker: its last md.ticker
record per market equals the pure fold over the committed trades and md.book (the engine's output
of a seeded order flow), also across SIGKILLs of the worker while the engine is running; it folds
committed records only; a crashing agent ends the process non-zero."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer

from streams.errors import EXIT_AGENT_CRASHED
from streams.loadgen import OrderFlow, produce_flow
from streams.markets import MarketRegistry
from streams.processors.ticker import fold_all
from streams.runtime.clients import make_producer, producer_config
from streams.runtime.namespace import Namespace
from streams.runtime.reader import standalone_consumer, watermarks
from streams.serde.codec import Codec
from streams.serde.topics import MD_BOOK, MD_TICKER, TRADES
from streams.settings import load_settings
from tests.pipeline import EngineProcess, committed_total, fresh_namespace, input_total, wait_for
from tests.sink.conftest import ServiceProcess, produce, random_trades, read_topic

pytestmark = pytest.mark.integration
ENGINE_ARGS = ["--batch-size", "200"]


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[list[Any]]:
    """Engines and workers a failing test leaves behind are killed."""
    started: list[Any] = []
    yield started
    while EngineProcess.started:
        engine = EngineProcess.started.pop()
        if engine.alive():
            engine.kill()
    for process in started:
        if process.alive():
            process.kill()


def last_tickers(bootstrap: str, ns: Namespace) -> dict[str, dict[str, Any]]:
    """The newest md.ticker record of each market (a market lives in one partition)."""
    out: dict[str, dict[str, Any]] = {}
    for record in read_topic(bootstrap, ns, MD_TICKER):
        out[record["market"]] = dict(record, quote_volume_24h=int(record["quote_volume_24h"]))
    return out


def expected_tickers(bootstrap: str, ns: Namespace) -> dict[str, dict[str, Any]]:
    """The pure fold over the committed trades and md.book."""
    return fold_all(read_topic(bootstrap, ns, TRADES), read_topic(bootstrap, ns, MD_BOOK))


def ticker_count(bootstrap: str, ns: Namespace) -> int:
    consumer = standalone_consumer(bootstrap)
    try:
        return sum(watermarks(consumer, ns(MD_TICKER), p)[1] for p in range(4))
    except KafkaException:
        return 0
    finally:
        consumer.close()


def describe(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> str:
    lines = [f"markets got {sorted(got)} want {sorted(want)}"]
    for market in sorted(set(got) & set(want)):
        diff = {k: (got[market].get(k), v) for k, v in want[market].items() if got[market].get(k) != v}
        if diff:
            lines.append(f"{market}: {diff}")
    return "\n".join(lines)


def seeded_flow(bootstrap: str, ns: Namespace, count: int, rate: float | None, seed: int) -> None:
    registry = MarketRegistry.load(load_settings().markets_file)
    flow = OrderFlow([m.spec() for m in registry], seed)
    produce_flow(make_producer(bootstrap), Codec(), flow, count, rate, ns=ns)


def drain_engine(bootstrap: str, ns: Namespace, engine: EngineProcess, group: str) -> None:
    total = input_total(bootstrap, ns)
    wait_for(lambda: committed_total(bootstrap, ns, group) >= total or not engine.alive(), 180,
             "the engine to consume all input")
    assert engine.alive(), engine.log_since_start()[-3000:]
    assert engine.stop() == 0, engine.log_since_start()[-3000:]


def worker(ns: Namespace, bootstrap: str, log: Path, started: list[Any], *args: str,
           env: dict[str, str] | None = None) -> ServiceProcess:
    process = ServiceProcess(["ticker", "run", *args], bootstrap, ns, log, env=env).start()
    started.append(process)
    return process


@pytest.mark.timeout(400)
def test_tickers_equal_the_fold_over_the_engine_output(kafka_bootstrap: str, unique: str, tmp_path: Path,
                                                       no_leftover_processes: list[Any]) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"tkr-{unique}")
    group = f"g-{unique}"
    seeded_flow(kafka_bootstrap, ns, 4000, None, seed=5)
    engine = EngineProcess(kafka_bootstrap, ns, group, "tkr-engine", tmp_path, args=ENGINE_ARGS).start()
    drain_engine(kafka_bootstrap, ns, engine, group)

    log = tmp_path / "ticker.log"
    process = worker(ns, kafka_bootstrap, log, no_leftover_processes, "--idle-exit", "3")
    assert process.wait(240) == 0, log.read_text()[-3000:]

    expected = expected_tickers(kafka_bootstrap, ns)
    published = last_tickers(kafka_bootstrap, ns)
    assert len(expected) >= 2, expected
    assert any(t["last_trade_id"] > 10 for t in expected.values())
    assert any(t["best_bid"] is not None and t["best_ask"] is not None for t in expected.values())
    assert all(t["book_seq"] > 0 for t in expected.values())
    assert published == expected, describe(published, expected)


@pytest.mark.timeout(500)
def test_tickers_survive_sigkills_of_the_worker(kafka_bootstrap: str, unique: str, tmp_path: Path,
                                               no_leftover_processes: list[Any]) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"tkk-{unique}")
    group = f"g-{unique}"
    log = tmp_path / "ticker.log"
    engine = EngineProcess(kafka_bootstrap, ns, group, "tkk-engine", tmp_path, args=ENGINE_ARGS).start()
    kills = 0
    # Two rounds: a part of the flow goes through the engine while the worker runs, and the worker
    # is SIGKILLed once it has published again since it started.
    for seed in (21, 22):
        flow = threading.Thread(target=seeded_flow, args=(kafka_bootstrap, ns, 6000, 1000, seed), daemon=True)
        flow.start()
        before = ticker_count(kafka_bootstrap, ns)
        process = worker(ns, kafka_bootstrap, log, no_leftover_processes)
        wait_for(lambda b=before, p=process: ticker_count(kafka_bootstrap, ns) > b + 20 or not p.alive(), 120,
                 "the ticker worker to publish")
        assert process.alive(), log.read_text()[-3000:]
        process.kill()
        kills += 1
        flow.join(120)
        assert not flow.is_alive()
    seeded_flow(kafka_bootstrap, ns, 1000, None, seed=23)
    drain_engine(kafka_bootstrap, ns, engine, group)
    last = worker(ns, kafka_bootstrap, log, no_leftover_processes, "--idle-exit", "3")
    assert last.wait(240) == 0, log.read_text()[-3000:]

    expected = expected_tickers(kafka_bootstrap, ns)
    published = last_tickers(kafka_bootstrap, ns)
    assert kills == 2
    assert len(expected) >= 2 and any(t["last_trade_id"] > 10 for t in expected.values())
    assert published == expected, describe(published, expected)


@pytest.mark.timeout(300)
def test_aborted_transactions_are_not_folded(kafka_bootstrap: str, unique: str, tmp_path: Path,
                                             no_leftover_processes: list[Any]) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"tka-{unique}")
    codec = Codec()
    trades = random_trades(random.Random(7), ["TA-A"], 40, 1_767_268_800_000)
    producer = Producer(producer_config(kafka_bootstrap, f"tka-{uuid.uuid4().hex[:8]}"))
    producer.init_transactions(30)
    for i in range(0, 30, 3):  # committed transactions, a marker after every third trade
        producer.begin_transaction()
        for trade in trades[i:i + 3]:
            producer.produce(ns(TRADES), key=b"TA-A", value=codec.encode(TRADES, trade))
        producer.commit_transaction(30)
    producer.begin_transaction()  # then trades 31..40 in a transaction that is aborted
    for trade in trades[30:]:
        producer.produce(ns(TRADES), key=b"TA-A", value=codec.encode(TRADES, {**trade, "qty": 10**9}))
    producer.abort_transaction(30)
    log = tmp_path / "ticker.log"
    process = worker(ns, kafka_bootstrap, log, no_leftover_processes, "--idle-exit", "3")
    assert process.wait(180) == 0, log.read_text()[-3000:]
    published = last_tickers(kafka_bootstrap, ns)
    assert published["TA-A"]["last_trade_id"] == 30
    assert published == fold_all(trades[:30], []), describe(published, fold_all(trades[:30], []))


@pytest.mark.timeout(300)
def test_a_crashing_agent_ends_the_worker_non_zero(kafka_bootstrap: str, unique: str, tmp_path: Path,
                                                   no_leftover_processes: list[Any]) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"tkc-{unique}")
    produce(kafka_bootstrap, ns, TRADES, random_trades(random.Random(8), ["TC-A"], 20, 1_767_268_800_000))
    log = tmp_path / "ticker.log"
    process = worker(ns, kafka_bootstrap, log, no_leftover_processes, "--idle-exit", "60",
                     env={"EXCHANGE_FAULT_POINT": "ticker-fold:5"})
    code = process.wait(180)
    text = log.read_text()
    assert code == EXIT_AGENT_CRASHED, text[-3000:]
    assert "ticker crashed" in text and "injected fault at ticker-fold" in text
    # Nothing of the crashed fold was written: a restart folds everything once.
    again = worker(ns, kafka_bootstrap, log, no_leftover_processes, "--idle-exit", "3")
    assert again.wait(180) == 0, log.read_text()[-3000:]
    trades = read_topic(kafka_bootstrap, ns, TRADES)
    published, expected = last_tickers(kafka_bootstrap, ns), fold_all(trades, [])
    assert published == expected, describe(published, expected) + log.read_text()[-3000:]
