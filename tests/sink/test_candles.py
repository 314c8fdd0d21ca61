"""Candles: the faust processor's output on md.candles and the sink's candle rows equal candles
computed directly from the trade list, for every interval, also across SIGKILLs of the faust worker.
The fold itself is checked against the same naive oracle with hypothesis (no broker)."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaException
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.timescale.sink import SinkConfig, TimescaleSink
from streams.processors.candles import INTERVALS, fold, new_state
from streams.runtime.reader import standalone_consumer, watermarks
from streams.serde.topics import MD_CANDLES, TRADES
from tests.pipeline import fresh_namespace, wait_for
from tests.sink.conftest import Database, ServiceProcess, produce, random_trades, read_topic

Key = tuple[str, str, int]


def naive_candles(trades: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Group by window and aggregate; every window but the latest of its market and interval is final."""
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for t in trades:
        for interval, length in INTERVALS.items():
            groups[(t["market"], interval, t["ts"] - t["ts"] % length)].append(t)
    latest: dict[tuple[str, str], int] = {}
    for market, interval, start in groups:
        latest[(market, interval)] = max(latest.get((market, interval), start), start)
    out: dict[Key, dict[str, Any]] = {}
    for (market, interval, start), members in groups.items():
        members.sort(key=lambda t: t["trade_id"])
        out[(market, interval, start)] = {
            "market": market, "interval": interval, "window_start": start,
            "open": members[0]["price"], "high": max(t["price"] for t in members),
            "low": min(t["price"] for t in members), "close": members[-1]["price"],
            "volume": sum(t["qty"] for t in members), "quote_volume": sum(t["price"] * t["qty"] for t in members),
            "trade_count": len(members), "first_trade_id": members[0]["trade_id"],
            "last_trade_id": members[-1]["trade_id"], "final": start < latest[(market, interval)],
        }
    return out


def describe(got: dict[Key, dict[str, Any]], want: dict[Key, dict[str, Any]]) -> str:
    lines = [f"missing {sorted(set(want) - set(got))[:5]}", f"extra {sorted(set(got) - set(want))[:5]}"]
    for key in sorted(set(got) & set(want)):
        if got[key] != want[key]:
            fields = {f: (got[key][f], want[key][f]) for f in want[key] if got[key][f] != want[key][f]}
            lines.append(f"{key}: {fields}")
    return "\n".join(lines[:20])


def latest_published(records: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The newest state of each candle among (possibly repeated) updates."""
    out: dict[Key, dict[str, Any]] = {}
    for r in records:
        key = (r["market"], r["interval"], r["window_start"])
        seen = out.get(key)
        if seen is None or (r["last_trade_id"], r["final"]) >= (seen["last_trade_id"], seen["final"]):
            out[key] = dict(r, quote_volume=int(r["quote_volume"]))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 7_200_000), st.integers(1, 1000), st.integers(1, 99)),
                min_size=1, max_size=120))
def test_fold_equals_direct_aggregation(steps: list[tuple[int, int, int, int]]) -> None:
    trades, ts, ids = [], dict.fromkeys("XYZ", 1_700_000_000_000), dict.fromkeys("XYZ", 0)
    for m, step, price, qty in steps:
        market = "XYZ"[m]
        ts[market] += step
        ids[market] += 1
        trades.append({"market": market, "trade_id": ids[market], "ts": ts[market], "price": price, "qty": qty})
    states: dict[str, dict[str, Any]] = defaultdict(new_state)
    published: list[dict[str, Any]] = []
    for t in trades:
        published.extend(fold(states[t["market"]], t))
        assert fold(states[t["market"]], t) == []  # a replayed trade changes nothing
    assert latest_published(published) == naive_candles(trades)


def candle_count(bootstrap: str, topic: str) -> int:
    consumer = standalone_consumer(bootstrap)
    try:
        return sum(watermarks(consumer, topic, p)[1] for p in range(4))
    except KafkaException:  # a new topic's leader is still being elected
        return 0
    finally:
        consumer.close()


@pytest.mark.timeout(300)
def test_candles_through_faust_with_kills_and_into_the_database(kafka_bootstrap: str, database: Database,
                                                                 unique: str, tmp_path: Path) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"cdl-{unique}")
    rng = random.Random(int(unique, 16))
    start = int(datetime(2026, 1, 1, 23, 10, tzinfo=UTC).timestamp() * 1000)
    trades = (random_trades(rng, ["CD-A", "CD-B"], 400, start)  # minutes and hours roll over
              + random_trades(rng, ["CD-C"], 150, start, max_step_ms=3 * 3_600_000))  # days roll over too
    in_order = sorted(trades, key=lambda t: (t["trade_id"], t["market"]))  # markets interleaved
    log = tmp_path / "marketdata.log"
    topic = ns(MD_CANDLES)
    kills = 0
    # Two rounds: produce half of the trades, start the worker, SIGKILL it while it publishes.
    for round_trades in (in_order[: len(in_order) // 2], in_order[len(in_order) // 2:]):
        produce(kafka_bootstrap, ns, TRADES, round_trades)
        before = candle_count(kafka_bootstrap, topic)
        worker = ServiceProcess(["marketdata", "run"], kafka_bootstrap, ns, log).start()
        wait_for(lambda b=before, w=worker: candle_count(kafka_bootstrap, topic) > b + 300 or not w.alive(), 90,
                 "the candle processor to publish")
        assert worker.alive(), log.read_text()[-3000:]
        worker.kill()
        kills += 1
    last = ServiceProcess(["marketdata", "run", "--idle-exit", "3"], kafka_bootstrap, ns, log).start()
    assert last.wait(180) == 0, log.read_text()[-3000:]

    expected = naive_candles(trades)
    published = latest_published(read_topic(kafka_bootstrap, ns, MD_CANDLES))
    assert kills == 2
    assert {k[1] for k in expected} == {"1m", "1h", "1d"}
    assert any(c["final"] for k, c in expected.items() if k[1] == "1d")
    assert published == expected, describe(published, expected)

    sink = TimescaleSink(SinkConfig(bootstrap=kafka_bootstrap, dsn=database.writer, namespace=ns,
                                    until_caught_up=True, name=f"sink-{unique}"))
    sink.run()
    with psycopg.connect(database.writer) as conn:
        rows = conn.execute(
            "select market, interval, (extract(epoch from window_start) * 1000)::bigint, open, high, low, close,"
            " volume, quote_volume, trade_count, first_trade_id, last_trade_id, final from candles").fetchall()
    columns = ("market", "interval", "window_start", "open", "high", "low", "close", "volume", "quote_volume",
               "trade_count", "first_trade_id", "last_trade_id", "final")
    stored = {(r[0], r[1], r[2]): dict(zip(columns, r, strict=True)) for r in rows}
    for candle in stored.values():
        candle["quote_volume"] = int(candle["quote_volume"])
    assert stored == expected
