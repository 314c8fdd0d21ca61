"""End to end with the real matching engine: loadgen → ``xchg engine run`` → the demo hook (faust
candles, then the sink): order events, trades, candles and L2 snapshots land in the database and
match the topics."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from connectors.timescale.demo import ingest_and_report
from streams.loadgen import OrderFlow, produce_flow
from streams.markets import MarketRegistry
from streams.runtime.clients import make_producer
from streams.serde.codec import Codec
from streams.serde.topics import ORDERS_EVENTS, TRADES
from streams.settings import Settings, load_settings
from tests.pipeline import EngineProcess, committed_total, fresh_namespace, input_total, wait_for
from tests.sink.conftest import Database, read_topic

pytestmark = pytest.mark.timeout(300)


def test_engine_output_through_candles_and_sink(kafka_bootstrap: str, database: Database, unique: str,
                                                 tmp_path: Path) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"demo-{unique}")
    registry = MarketRegistry.load(load_settings().markets_file)
    producer = make_producer(kafka_bootstrap)
    produce_flow(producer, Codec(), OrderFlow([m.spec() for m in registry], 4), 6_000, None, ns=ns)
    assert producer.flush(30) == 0
    group = f"g-{unique}"
    engine = EngineProcess(kafka_bootstrap, ns, group, "demo-engine", tmp_path).start()
    try:
        total = input_total(kafka_bootstrap, ns)
        wait_for(lambda: committed_total(kafka_bootstrap, ns, group) >= total, 120, "the engine to consume all input")
    finally:
        assert engine.stop() == 0

    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=ns.prefix, database_url=database.writer,
                        book_snapshot_interval_s=1)
    report = ingest_and_report(settings)
    print("\n" + report)

    trades = read_topic(kafka_bootstrap, ns, TRADES)
    events = read_topic(kafka_bootstrap, ns, ORDERS_EVENTS)
    assert trades and "OHLCV 1m" in report
    with psycopg.connect(database.writer) as conn:
        stored = conn.execute("select market, trade_id from trades").fetchall()
        n_events = conn.execute("select count(*) from order_events").fetchone()
        candle_trades = conn.execute("select market, sum(trade_count) from candles where interval = '1d'"
                                     " group by market").fetchall()
        snapshots = conn.execute("select count(*), count(distinct market) from book_snapshots").fetchone()
        anomalies = conn.execute("select count(*) from sink_anomalies").fetchone()
        depth = conn.execute("select jsonb_array_length(bids) + jsonb_array_length(asks) from book_snapshots"
                             " order by ts desc limit 1").fetchone()
    assert sorted(stored) == sorted((t["market"], t["trade_id"]) for t in trades)
    assert n_events == (len(events),)
    per_market: dict[str, int] = {}
    for t in trades:
        per_market[t["market"]] = per_market.get(t["market"], 0) + 1
    assert {m: int(n) for m, n in candle_trades} == per_market
    assert snapshots is not None and snapshots[0] > 0 and snapshots[1] == len(registry)
    assert depth is not None and depth[0] > 0
    assert anomalies == (0,)
