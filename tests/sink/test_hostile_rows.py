"""Commands at and beyond every bound of the contract, as far as PostgreSQL: every output of an
accepted command (order events, trades, the L2 book, the candles its trades make) becomes the row
the sink would write, and the database takes it (no value out of range, no index row too large).

The flows are the hostile unit test's (``tests/unit/runtime/test_hostile_commands.py``); each
example's rows are written in one transaction that is rolled back, so examples do not collide."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from psycopg import sql

from connectors.timescale.records import Book, apply_book, digest
from connectors.timescale.tables import (
    CANDLES_TABLE,
    EVENT_JOURNAL,
    SNAPSHOTS_TABLE,
    TRADE_JOURNAL,
    TRADES_TABLE,
    Table,
    candle_row,
    event_row,
    snapshot_row,
    trade_row_reader,
)
from streams.domain.commands import Side
from streams.processors.candles import fold, new_state, overflow, to_record
from streams.processors.matching import book_records
from streams.runtime.partition import PartitionState
from streams.runtime.records import event_record, trade_record
from streams.serde.topics import MD_BOOK, MD_CANDLES, ORDERS_COMMANDS, ORDERS_EVENTS, TRADES
from tests.sink.conftest import Database
from tests.unit.runtime.test_hostile_commands import CODEC, REGISTRY, _self_trades, _sell, flows

pytestmark = pytest.mark.integration


@pytest.fixture
def connection(database: Database) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database.writer) as conn:
        yield conn


def _insert(conn: psycopg.Connection[Any], table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
    if not rows:
        return
    marks = sql.SQL(", ").join(sql.SQL("%s::" + t) for t in table.types)
    stmt = sql.SQL("insert into {} ({}) values ({})").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, table.names)), marks)
    with conn.cursor() as cur:
        cur.executemany(stmt, rows)


def rows_of(flow: list[dict[str, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows the sink would write for the outputs of ``flow`` (decoded from the encoded
    records, as the sink decodes them from the topics)."""
    state = PartitionState(0, REGISTRY, CODEC)
    rows: dict[str, list[tuple[Any, ...]]] = {"events": [], "trades": [], "candles": [], "snapshots": []}
    read_trade = trade_row_reader(CODEC)
    books: dict[str, Book] = {}
    candle_states: dict[str, dict[str, Any]] = {}
    for offset, record in enumerate(flow):
        result = state.process(offset, CODEC.encode(ORDERS_COMMANDS, record), 1_700_000_000_000 + offset * 61_000)
        if result.dead is not None or result.market is None or result.command is None:
            continue
        market = result.market
        for event in result.events:
            value = CODEC.encode(ORDERS_EVENTS, event_record(market, event, result.command.command_id, 0, offset))
            rows["events"].append((*event_row(CODEC.decode(ORDERS_EVENTS, value)), digest(value)))
            if type(event).__name__ == "Trade":
                value = CODEC.encode(TRADES, trade_record(market, event, result.command.command_id, 0, offset))
                rows["trades"].append((*read_trade(value), digest(value)))
                trade = CODEC.decode(TRADES, value)
                candles = candle_states.setdefault(market, new_state())
                assert overflow(candles, trade) is None, "an accepted trade would overflow a candle"
                for candle in fold(candles, trade):
                    decoded = CODEC.decode(MD_CANDLES, CODEC.encode(MD_CANDLES, to_record(candle)))
                    rows["candles"].append(candle_row(decoded))
        engine = state.engine(market)
        changes = [(side, price, qty) for side in (Side.BUY, Side.SELL) for price, qty in engine.book_levels(side)]
        for part in book_records(market, engine.seq, 0, True, engine.last_ts, 0, offset, changes):
            step = apply_book(books.setdefault(market, Book()), CODEC.decode(MD_BOOK, CODEC.encode(MD_BOOK, part)),
                              60_000)
            if step.snapshot is not None:
                rows["snapshots"].append(snapshot_row(step.snapshot))
    # Candle updates of one window replace each other in the sink (an upsert): keep the last.
    latest = {row[:3]: row for row in rows["candles"]}
    rows["candles"] = list(latest.values())
    return rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@example([_sell("h1", 10**12, 9_223_372_036_854_775_800), _sell("h2", 10**12, 9_223_372_036_854_775_800)])
@example([*_self_trades(19), _sell("big", 10**8, 9_000_000_000_000_000_000)])
@given(flows())
def test_every_output_of_an_accepted_command_inserts_into_postgres(connection: psycopg.Connection[Any],
                                                                  flow: list[dict[str, Any]]) -> None:
    rows = rows_of(flow)
    try:
        with connection.transaction():
            _insert(connection, EVENT_JOURNAL.written, rows["events"])
            _insert(connection, TRADE_JOURNAL.written, rows["trades"])
            _insert(connection, CANDLES_TABLE, rows["candles"])
            _insert(connection, SNAPSHOTS_TABLE, rows["snapshots"])
            stored = connection.execute("select count(*) from order_events").fetchone()
            assert stored is not None and stored[0] == len(rows["events"])
            raise _RollBack
    except _RollBack:
        pass


class _RollBack(Exception):
    """Leaves ``connection.transaction()`` by rolling it back: each example starts from empty tables."""


def test_a_self_trading_flow_reaches_every_table(connection: psycopg.Connection[Any]) -> None:
    """The checker above sees rows of every kind (it is not vacuous) and fails on a planted fault:
    a value the database must refuse."""
    rows = rows_of(_self_trades(5))
    assert all(rows[kind] for kind in ("events", "trades", "candles", "snapshots"))
    bad = list(rows["trades"][0])
    bad[TRADES_TABLE.position("maker_account")] = "nul\x00account"  # PostgreSQL text refuses NUL
    with pytest.raises(psycopg.DataError), connection.transaction():
        _insert(connection, TRADE_JOURNAL.written, [tuple(bad)])
