"""Every query of docs/analysts.md runs as the read-only analyst role and returns rows; the analyst
cannot write; migrations run twice change nothing."""

from __future__ import annotations

import random
import re
import time
from collections import defaultdict
from typing import Any

import psycopg
import pytest

from connectors.timescale.migrations import migrate
from connectors.timescale.sink import SinkConfig, TimescaleSink, market_rows
from streams.processors.candles import fold, new_state, to_record
from streams.serde.topics import MD_CANDLES, TRADES
from streams.settings import PROJECT_ROOT, load_settings
from tests.pipeline import fresh_namespace
from tests.sink.conftest import Database, produce, random_trades

DOC = PROJECT_ROOT / "docs" / "analysts.md"


def doc_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)


def schema_fingerprint(dsn: str) -> list[Any]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
            " coalesce(pg_get_viewdef(c.oid), '')"
            " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped"
            " where n.nspname = 'xchg' order by 1, 3").fetchall() + conn.execute(
            "select version, name, checksum, applied_at from schema_migrations order by version").fetchall()


def test_migrations_rerun_change_nothing_and_analyst_cannot_write(database: Database) -> None:
    before = schema_fingerprint(database.writer)
    mode, applied = migrate(database.writer)
    assert mode == "plain" and applied == []
    assert schema_fingerprint(database.writer) == before
    with psycopg.connect(database.analyst) as conn:
        for statement in ("insert into markets (symbol, base, quote, price_decimals, qty_decimals, tick_size,"
                          " lot_size) values ('X-Y', 'X', 'Y', 0, 0, 1, 1)",
                          "delete from trades", "update kafka_offsets set next_offset = 0",
                          "create table xchg.t (x int)", "set transaction read write; delete from candles"):
            with pytest.raises((psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)):
                conn.execute(statement)
            conn.rollback()


def test_documented_queries_run_as_analyst(kafka_bootstrap: str, database: Database, unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"aq-{unique}")
    now_ms = int(time.time() * 1000)
    trades = random_trades(random.Random(9), ["BTC-USD", "ETH-USD"], 500, now_ms - 6 * 3_600_000,
                           max_step_ms=60_000)
    for t in trades:
        t["maker_account"], t["taker_account"] = "acct001", "acct002"
    produce(kafka_bootstrap, ns, TRADES, [*trades, trades[0]])  # a duplicate for the data-quality query
    states: dict[str, dict[str, Any]] = defaultdict(new_state)
    candles = [to_record(c) for t in trades for c in fold(states[t["market"]], t)]
    produce(kafka_bootstrap, ns, MD_CANDLES, candles)
    TimescaleSink(SinkConfig(bootstrap=kafka_bootstrap, dsn=database.writer, namespace=ns, until_caught_up=True),
                  markets=market_rows(load_settings().markets_file)).run()
    with psycopg.connect(database.writer, autocommit=True) as conn:
        conn.execute("insert into settlement_batches (deployment, market, batch_seq, first_trade_id, last_trade_id,"
                     " batch_hash, record, state, tx_hash) values ('0xdep', 'BTC-USD', 1, 1, 250, '\\x00',"
                     " '\\x00', 'FINALIZED', '\\xabcd')")

    queries = doc_queries()
    assert len(queries) >= 6
    with psycopg.connect(database.analyst) as conn:
        assert conn.execute("show transaction_read_only").fetchone() == ("on",)
        results = [conn.execute(q).fetchall() for q in queries]
    assert all(results), [q.splitlines()[0] for q, r in zip(queries, results, strict=True) if not r]
    ohlcv, vwap = results[0], results[1]
    assert len(ohlcv) > 50 and all(len(row) == 10 for row in ohlcv)
    btc = [t for t in trades if t["market"] == "BTC-USD"]
    expected_vwap = sum(t["price"] * t["qty"] for t in btc) / sum(t["qty"] for t in btc) / 100  # 2 price decimals
    assert abs(float(vwap[0][1]) - expected_vwap) < 1e-6
    settlement = results[5]
    assert settlement[0][5] == "FINALIZED" and settlement[0][6] == "0xabcd"
