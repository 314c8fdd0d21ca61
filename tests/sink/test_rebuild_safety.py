"""``xchg db rebuild`` cannot lose rows: it is refused while a sink of the database runs (and a sink
while a rebuild runs), ``--since`` repairs or reports rows missing before its time, rebuilds every
candle window its time cuts, and verification compares every table it rebuilt (trades, events,
candles, L2 snapshots) over the whole range of the topics."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from streams.processors.candles import INTERVALS, fold, new_state, to_record
from streams.runtime.namespace import Namespace
from streams.serde.topics import MD_BOOK, MD_CANDLES, ORDERS_EVENTS, TRADES
from tests.pipeline import fresh_namespace, wait_for
from tests.sink.conftest import (
    Database,
    ServiceProcess,
    book_deltas,
    error_line,
    produce,
    produce_at,
    random_events,
    random_trades,
    read_topic,
    rows,
    run_xchg,
    try_scalar,
)

pytestmark = pytest.mark.timeout(300)

START_MS = 1_764_000_000_000
TRADE_ROWS = ("select market, trade_id, (extract(epoch from ts) * 1000)::bigint, seq, price, qty, maker_order_id,"
              " maker_account, taker_order_id, taker_account, taker_side from trades")
EVENT_ROWS = "select market, seq, (extract(epoch from ts) * 1000)::bigint, command_id, payload from order_events"
CANDLE_ROWS = ("select market, interval, (extract(epoch from window_start) * 1000)::bigint, open, high, low, close,"
               " volume, quote_volume::bigint, trade_count, first_trade_id, last_trade_id, final from candles")


def trade_tuples(trades: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((t["market"], t["trade_id"], t["ts"], t["seq"], t["price"], t["qty"], t["maker_order_id"],
                   t["maker_account"], t["taker_order_id"], t["taker_account"], t["taker_side"]) for t in trades)


def event_keys(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((e["market"], e["seq"], e["ts"], e["command_id"]) for e in events)


def stored_event_keys(db: Database) -> list[tuple[Any, ...]]:
    return sorted(r[:4] for r in rows(db.writer, EVENT_ROWS))


def candles_of(trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
    states: dict[str, dict[str, Any]] = defaultdict(new_state)
    return [to_record(c) for t in sorted(trades, key=lambda t: (t["market"], t["trade_id"]))
            for c in fold(states[t["market"]], t)]


def latest_candles(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    latest: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in records:
        key = (r["market"], r["interval"], r["window_start"])
        seen = latest.get(key)
        if seen is None or (r["last_trade_id"], r["final"]) >= (seen["last_trade_id"], seen["final"]):
            latest[key] = r
    return sorted((r["market"], r["interval"], r["window_start"], r["open"], r["high"], r["low"], r["close"],
                   r["volume"], int(r["quote_volume"]), r["trade_count"], r["first_trade_id"], r["last_trade_id"],
                   r["final"]) for r in latest.values())


def sink_until_caught_up(bootstrap: str, ns: Namespace, db: Database) -> None:
    done = run_xchg(["sink", "timescale", "--until-caught-up"], bootstrap, ns, db)
    assert done.returncode == 0, done.stderr[-3000:]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def test_rebuild_is_refused_while_a_sink_runs(kafka_bootstrap: str, database: Database, unique: str,
                                             tmp_path: Path) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"rbl-{unique}")
    trades = random_trades(random.Random(21), ["RL-A", "RL-B"], 1_500, START_MS)
    produce(kafka_bootstrap, ns, TRADES, trades[:2_000])
    sink = ServiceProcess(["sink", "timescale"], kafka_bootstrap, ns, tmp_path / "sink.log", database).start()
    count = "select count(*) from trades"
    try:
        wait_for(lambda: try_scalar(database.writer, count) == 2_000 or not sink.alive(), 60, "the sink to write")
        assert sink.alive(), sink.log()[-3000:]
        offsets = rows(database.writer, "select topic, partition, next_offset from kafka_offsets order by 1, 2")

        done = run_xchg(["db", "rebuild", "--yes"], kafka_bootstrap, ns, database)
        assert done.returncode != 0, done.stdout[-3000:]
        assert "running" in error_line(done)
        second = run_xchg(["sink", "timescale", "--until-caught-up"], kafka_bootstrap, ns, database)
        assert second.returncode != 0, second.stderr[-3000:]
        assert "running" in error_line(second)
        # Nothing was deleted or reset, and the running sink goes on writing.
        assert try_scalar(database.writer, count) == 2_000
        assert rows(database.writer, "select topic, partition, next_offset from kafka_offsets order by 1, 2") == offsets
        produce(kafka_bootstrap, ns, TRADES, trades[2_000:])
        wait_for(lambda: try_scalar(database.writer, count) == len(trades) or not sink.alive(), 60,
                 "the sink to write the rest")
        assert sink.alive(), sink.log()[-3000:]
    finally:
        sink.stop()
    done = run_xchg(["db", "rebuild", "--yes"], kafka_bootstrap, ns, database)  # no sink now: it runs
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "verified" in done.stdout
    assert sorted(rows(database.writer, TRADE_ROWS)) == trade_tuples(trades)


def test_a_sink_is_refused_while_a_rebuild_holds_the_database(kafka_bootstrap: str, database: Database,
                                                               unique: str) -> None:
    from connectors.timescale.lease import SinkLease

    ns = fresh_namespace(kafka_bootstrap, f"rbh-{unique}")
    produce(kafka_bootstrap, ns, TRADES, random_trades(random.Random(22), ["RH-A"], 50, START_MS))
    rebuild = SinkLease(database.writer, ns("xchg-sink"), "rebuild", exclusive=True)
    rebuild.connection()
    try:
        done = run_xchg(["sink", "timescale", "--until-caught-up"], kafka_bootstrap, ns, database)
        assert done.returncode != 0
        assert "rebuild" in error_line(done)
        other_name = run_xchg(["sink", "timescale", "--until-caught-up"], kafka_bootstrap, ns, database,
                              env={"EXCHANGE_SINK_NAME": f"other-{unique}"})
        assert other_name.returncode != 0  # the rebuild holds the whole database, not one sink name
        assert "rebuild" in error_line(other_name)
    finally:
        rebuild.release()
    assert try_scalar(database.writer, "select count(*) from trades") == 0
    sink_until_caught_up(kafka_bootstrap, ns, database)
    assert try_scalar(database.writer, "select count(*) from trades") == 50


def test_a_sink_cut_off_while_a_rebuild_ran_is_fenced(database: Database, unique: str) -> None:
    from connectors.timescale.errors import SinkFenced
    from connectors.timescale.lease import SinkLease

    name = f"fence-{unique}"
    sink = SinkLease(database.writer, name, "sink")
    sink.connection()
    sink.drop()  # the connection is lost; nothing else ran: the lease is taken back
    sink.connection()
    sink.drop()  # lost again, and this time a rebuild runs before the sink comes back
    rebuild = SinkLease(database.writer, name, "rebuild", exclusive=True)
    rebuild.connection()
    rebuild.release()
    with pytest.raises(SinkFenced) as raised:
        sink.connection()
    assert "\n" not in str(raised.value)
    sink.release()


def test_rebuild_since_with_rows_missing_before_its_time(kafka_bootstrap: str, database: Database,
                                                         unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"rbm-{unique}")
    rng = random.Random(23)
    trades = random_trades(rng, ["RM-A", "RM-B"], 1_500, START_MS)
    events = random_events(rng, ["RM-A", "RM-B"], 2_000, START_MS)
    produce(kafka_bootstrap, ns, TRADES, trades)
    produce(kafka_bootstrap, ns, ORDERS_EVENTS, events)
    sink_until_caught_up(kafka_bootstrap, ns, database)
    since_ms = sorted(t["ts"] for t in trades)[len(trades) // 2]
    since = datetime.fromtimestamp(since_ms / 1000, tz=UTC)
    with psycopg.connect(database.writer, autocommit=True) as conn:
        conn.execute("delete from trades where trade_id %% 5 = 0 and ts < %s", (since,))
        conn.execute("delete from order_events where seq %% 7 = 0 and ts < %s", (since,))

    done = run_xchg(["db", "rebuild", "--yes", "--since", iso(since_ms)], kafka_bootstrap, ns, database)
    if done.returncode == 0:  # reported verified: then it rebuilt the missing rows
        assert "verified" in done.stdout
        assert sorted(rows(database.writer, TRADE_ROWS)) == trade_tuples(trades)
        assert stored_event_keys(database) == event_keys(events)
    else:
        assert "verified:" not in done.stdout, done.stdout


def test_rebuild_since_reports_rows_missing_before_what_it_reads(kafka_bootstrap: str, database: Database,
                                                                 unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"rbr-{unique}")
    rng = random.Random(24)
    trades = sorted(random_trades(rng, ["RR-A", "RR-B"], 1_500, START_MS), key=lambda t: t["ts"])
    events = sorted(random_events(rng, ["RR-A", "RR-B"], 2_000, START_MS), key=lambda e: e["ts"])
    # The broker's times are the event times: rebuilding --since T reads only from about T on.
    produce_at(kafka_bootstrap, ns, TRADES, trades)
    produce_at(kafka_bootstrap, ns, ORDERS_EVENTS, events)
    sink_until_caught_up(kafka_bootstrap, ns, database)
    since_ms = trades[len(trades) * 3 // 4]["ts"]
    early = datetime.fromtimestamp(trades[len(trades) // 4]["ts"] / 1000, tz=UTC)
    with psycopg.connect(database.writer, autocommit=True) as conn:
        conn.execute("delete from trades where trade_id %% 5 = 0 and ts < %s", (early,))
        conn.execute("delete from order_events where seq %% 7 = 0 and ts < %s", (early,))

    done = run_xchg(["db", "rebuild", "--yes", "--since", iso(since_ms)], kafka_bootstrap, ns, database)
    assert done.returncode != 0, done.stdout[-3000:]
    assert "verified:" not in done.stdout, done.stdout
    assert "trades" in done.stdout + done.stderr


def test_rebuild_since_rebuilds_the_candle_windows_its_time_cuts(kafka_bootstrap: str, database: Database,
                                                                  unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"rbc-{unique}")
    trades = random_trades(random.Random(25), ["RC-A", "RC-B"], 600, START_MS)
    candles = candles_of(trades)
    produce(kafka_bootstrap, ns, TRADES, trades)
    produce(kafka_bootstrap, ns, MD_CANDLES, candles)
    sink_until_caught_up(kafka_bootstrap, ns, database)
    expected = latest_candles(read_topic(kafka_bootstrap, ns, MD_CANDLES))
    assert sorted(rows(database.writer, CANDLE_ROWS)) == expected

    since_ms = sorted(t["ts"] for t in trades)[len(trades) // 2] + 1
    since_ms += 1 if since_ms % 60_000 == 0 else 0  # inside a minute, not at its start
    cut = [(interval, since_ms - since_ms % length) for interval, length in INTERVALS.items()]
    assert all(start < since_ms for _, start in cut)
    since = datetime.fromtimestamp(since_ms / 1000, tz=UTC)
    with psycopg.connect(database.writer, autocommit=True) as conn:
        for interval, start in cut:  # damage the windows the time cuts
            conn.execute("update candles set high = high + 7, trade_count = trade_count + 1"
                         " where interval = %s and window_start = %s",
                         (interval, datetime.fromtimestamp(start / 1000, tz=UTC)))
        damaged = conn.execute("select count(*) from candles where window_start < %s and window_start"
                               " + case interval when '1m' then interval '1 minute' when '1h' then interval '1 hour'"
                               " else interval '1 day' end > %s", (since, since)).fetchone()
    assert damaged is not None and damaged[0] >= 3

    done = run_xchg(["db", "rebuild", "--yes", "--since", iso(since_ms)], kafka_bootstrap, ns, database)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "verified" in done.stdout and "candles" in done.stdout
    assert sorted(rows(database.writer, CANDLE_ROWS)) == expected
    assert sorted(rows(database.writer, TRADE_ROWS)) == trade_tuples(trades)


def test_rebuild_verification_compares_candles_and_book_snapshots(kafka_bootstrap: str, database: Database,
                                                                   unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"rbv-{unique}")
    rng = random.Random(26)
    trades = random_trades(rng, ["RV-A"], 400, START_MS)
    produce(kafka_bootstrap, ns, TRADES, trades)
    produce(kafka_bootstrap, ns, MD_CANDLES, candles_of(trades))
    produce(kafka_bootstrap, ns, MD_BOOK, book_deltas(rng, ["RV-A"], 300, START_MS))
    sink_until_caught_up(kafka_bootstrap, ns, database)
    snapshots = rows(database.writer, "select count(*) from book_snapshots")[0][0]
    assert snapshots > 10
    since_ms = sorted(t["ts"] for t in trades)[300]
    since = datetime.fromtimestamp(since_ms / 1000, tz=UTC)

    # A candle of a window that ends before the time: --since does not rebuild it, so it must not vouch for it.
    with psycopg.connect(database.writer, autocommit=True) as conn:
        conn.execute("update candles set low = low - 1 where (market, interval, window_start) ="
                     " (select market, interval, window_start from candles where interval = '1m'"
                     "  order by window_start limit 1)")
    done = run_xchg(["db", "rebuild", "--yes", "--since", iso(since_ms)], kafka_bootstrap, ns, database)
    assert done.returncode != 0, done.stdout[-3000:]
    assert "verified:" not in done.stdout and "candles" in done.stdout + done.stderr

    full = run_xchg(["db", "rebuild", "--yes"], kafka_bootstrap, ns, database)  # repairs everything
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    assert "verified" in full.stdout and "snapshots" in full.stdout
    assert rows(database.writer, "select count(*) from book_snapshots")[0][0] == snapshots

    # An L2 snapshot from before the time.
    with psycopg.connect(database.writer, autocommit=True) as conn:
        conn.execute("update book_snapshots set bids = '[[1, 1]]' where (market, book_seq, ts) ="
                     " (select market, book_seq, ts from book_snapshots where ts < %s order by ts limit 1)", (since,))
    done = run_xchg(["db", "rebuild", "--yes", "--since", iso(since_ms)], kafka_bootstrap, ns, database)
    assert done.returncode != 0, done.stdout[-3000:]
    assert "verified:" not in done.stdout
    assert "snapshot" in done.stdout + done.stderr
