"""The sink on the real broker and PostgreSQL: exactly once through SIGKILLs, input anomalies
reported, rejected and undecodable records dead-lettered."""

from __future__ import annotations

import random
from pathlib import Path

import psycopg
import pytest

from connectors.timescale.sink import SinkConfig, TimescaleSink
from streams.serde.topics import DLQ_SINK, TRADES
from tests.pipeline import fresh_namespace, wait_for
from tests.sink.conftest import (
    Database,
    ServiceProcess,
    produce,
    produce_raw,
    random_trades,
    read_topic,
    try_scalar,
)

pytestmark = pytest.mark.timeout(240)


def stored_trade_ids(dsn: str) -> list[tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return [(m, t) for m, t in conn.execute("select market, trade_id from trades")]


def test_sigkill_during_ingestion_loses_and_duplicates_nothing(kafka_bootstrap: str, database: Database,
                                                               unique: str, tmp_path: Path) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"eo-{unique}")
    rng = random.Random(7)
    now_ms = 1_764_000_000_000
    trades = random_trades(rng, ["EO-A", "EO-B", "EO-C", "EO-D"], 6_000, now_ms)
    produce(kafka_bootstrap, ns, TRADES, trades[: len(trades) // 2])
    sink = ServiceProcess(["sink", "timescale", "--batch-size", "400"], kafka_bootstrap, ns,
                          tmp_path / "sink.log", database, env={"EXCHANGE_SINK_LINGER_MS": "20"})
    kills = 0
    count = "select count(*) from trades"
    for kill in range(6):
        before = try_scalar(database.writer, count) or 0
        sink.start()
        # Kill only once this incarnation has written something: mid-ingestion, between or inside commits.
        wait_for(lambda b=before: (try_scalar(database.writer, count) or 0) > b + 300 or not sink.alive(), 60,
                 "the sink to make progress")
        assert sink.alive(), sink.log()[-2000:]
        sink.kill()
        kills += 1
        if kill == 2:  # keep producing while the sink is down and restarting
            produce(kafka_bootstrap, ns, TRADES, trades[len(trades) // 2:])
    final = ServiceProcess(["sink", "timescale", "--until-caught-up"], kafka_bootstrap, ns,
                           tmp_path / "sink-final.log", database)
    final.start()
    assert final.wait(120) == 0, final.log()[-2000:]

    in_topic = sorted((r["market"], r["trade_id"]) for r in read_topic(kafka_bootstrap, ns, TRADES))
    in_db = stored_trade_ids(database.writer)
    assert kills == 6
    assert len(in_db) == len(set(in_db)), "duplicate rows"
    assert sorted(in_db) == in_topic
    assert len(in_topic) == len(trades)
    with psycopg.connect(database.writer) as conn:
        anomalies = conn.execute("select count(*) from sink_anomalies").fetchone()
        offsets = conn.execute("select sum(next_offset) from kafka_offsets where topic = %s", (ns(TRADES),)).fetchone()
    assert anomalies == (0,)
    assert offsets == (len(trades),)


def test_gaps_duplicates_rejections_and_garbage(kafka_bootstrap: str, database: Database, unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"an-{unique}")
    trades = random_trades(random.Random(3), ["AN-X"], 10, 1_764_000_000_000)
    bad = dict(trades[9], trade_id=11, maker_account="nul\x00byte")  # PostgreSQL text cannot hold NUL
    stream = [*trades[:5], trades[3], *trades[6:], bad, dict(trades[9], trade_id=12)]  # dup 4, gap at 6
    produce(kafka_bootstrap, ns, TRADES, stream)
    produce_raw(kafka_bootstrap, ns, TRADES, b"AN-X", b"\x00garbage")

    sink = TimescaleSink(SinkConfig(bootstrap=kafka_bootstrap, dsn=database.writer, namespace=ns,
                                    until_caught_up=True, name=f"sink-{unique}"))
    stats = sink.run()

    ids = [t for _, t in stored_trade_ids(database.writer)]
    assert sorted(ids) == [1, 2, 3, 4, 5, 7, 8, 9, 10, 12]
    assert stats.duplicates == 1 and stats.gaps == 1 and stats.dead_letters == 2
    with psycopg.connect(database.writer) as conn:
        anomalies = conn.execute("select kind, expected, got from sink_anomalies order by id").fetchall()
    assert anomalies == [("duplicate", 6, 4), ("gap", 6, 7)]
    dead = read_topic(kafka_bootstrap, ns, DLQ_SINK, decode=False)
    reasons = sorted(dict(m.headers())["reason"].decode().split(":")[0] for m in dead)
    assert reasons == ["db_rejected", "undecodable"]
    assert b"\x00garbage" in {m.value() for m in dead}
    assert {dict(m.headers())["source_topic"] for m in dead} == {ns(TRADES).encode()}
