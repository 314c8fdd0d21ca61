"""Rows of two streams never share a database unnoticed: a second namespace, or a recreated topic,
into a database holding another stream's rows is refused at start (one line, non-zero exit), and
a record that collides with a stored row holding different values stops the sink; only a
byte-identical record counts as a duplicate."""

from __future__ import annotations

import random
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from streams.runtime.namespace import Namespace
from streams.serde.topics import ORDERS_EVENTS, TRADES
from tests.pipeline import fresh_namespace, wait_for
from tests.sink.conftest import (
    Database,
    error_line,
    produce,
    random_events,
    random_trades,
    read_topic,
    rows,
    run_xchg,
)

pytestmark = pytest.mark.timeout(300)

MARKETS = ["ID-A", "ID-B"]


def stream(seed: int, per_market: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    return (random_trades(rng, MARKETS, per_market, 1_764_000_000_000),
            random_events(rng, MARKETS, per_market * 3, 1_764_000_000_000))


def fill(bootstrap: str, ns: Namespace, seed: int, per_market: int) -> None:
    trades, events = stream(seed, per_market)
    produce(bootstrap, ns, TRADES, trades)
    produce(bootstrap, ns, ORDERS_EVENTS, events)


def stored(db: Database) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    trades = rows(db.writer, "select market, trade_id, (extract(epoch from ts) * 1000)::bigint, seq, price, qty,"
                             " maker_order_id, maker_account, taker_order_id, taker_account, taker_side from trades")
    events = rows(db.writer, "select market, seq, (extract(epoch from ts) * 1000)::bigint, command_id, account"
                             " from order_events")
    return sorted(trades), sorted(events)


def in_topics(bootstrap: str, ns: Namespace) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    trades = [(t["market"], t["trade_id"], t["ts"], t["seq"], t["price"], t["qty"], t["maker_order_id"],
               t["maker_account"], t["taker_order_id"], t["taker_account"], t["taker_side"])
              for t in read_topic(bootstrap, ns, TRADES)]
    events = [(e["market"], e["seq"], e["ts"], e["command_id"], e["body"][1]["account"])
              for e in read_topic(bootstrap, ns, ORDERS_EVENTS)]
    return sorted(trades), sorted(events)


def duplicates_counted(db: Database) -> int:
    return int(rows(db.writer, "select count(*) from sink_anomalies where kind = 'duplicate'")[0][0])


def test_second_namespace_into_the_same_database(kafka_bootstrap: str, database: Database, unique: str) -> None:
    ns_a = fresh_namespace(kafka_bootstrap, f"ida-{unique}")
    ns_b = fresh_namespace(kafka_bootstrap, f"idb-{unique}")
    fill(kafka_bootstrap, ns_a, 1, 1_500)
    fill(kafka_bootstrap, ns_b, 2, 1_500)

    first = run_xchg(["sink", "timescale", "--until-caught-up"], kafka_bootstrap, ns_a, database)
    assert first.returncode == 0, first.stderr[-3000:]
    a_trades, a_events = in_topics(kafka_bootstrap, ns_a)
    assert stored(database) == (a_trades, a_events)

    second = run_xchg(["sink", "timescale", "--until-caught-up"], kafka_bootstrap, ns_b, database)
    b_trades, b_events = in_topics(kafka_bootstrap, ns_b)
    trades, events = stored(database)
    if second.returncode == 0:  # accepted: then every record of both streams is in the database
        assert set(b_trades) <= set(trades) and set(b_events) <= set(events), "rows of the second stream lost"
        assert set(a_trades) <= set(trades) and set(a_events) <= set(events), "rows of the first stream lost"
    else:  # refused: at start, with one line, and the database is untouched
        line = error_line(second)
        assert ns_b.prefix in line and ns_a.prefix in line, line
        assert "xchg db rebuild" in line, line
        assert (trades, events) == (a_trades, a_events)
    assert duplicates_counted(database) == 0  # no record of b- is byte-identical to one of a-


def delete_topics(bootstrap: str, ns: Namespace) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(ns.prefix)]
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result()
    wait_for(lambda: not any(t.startswith(ns.prefix) for t in admin.list_topics(timeout=30).topics), 60,
             "the topics to be deleted")


def recreate(bootstrap: str, name: str) -> Namespace:
    """The namespace's topics created again (the broker may still be finishing the deletion)."""
    def attempt() -> Namespace | None:
        try:
            return fresh_namespace(bootstrap, name)
        except Exception:  # "marked for deletion" for a moment after the delete
            return None
    namespace: Namespace = wait_for(attempt, 60, "the topics to be created again")
    return namespace


def test_recreated_topics_into_a_database_with_old_rows(kafka_bootstrap: str, database: Database,
                                                        unique: str) -> None:
    name = f"idr-{unique}"
    ns = fresh_namespace(kafka_bootstrap, name)
    fill(kafka_bootstrap, ns, 3, 2_000)
    first = run_xchg(["sink", "timescale", "--until-caught-up"], kafka_bootstrap, ns, database)
    assert first.returncode == 0, first.stderr[-3000:]
    old = in_topics(kafka_bootstrap, ns)
    assert stored(database) == old

    # A reset of Kafka alone: the same topic names, new topics, a new stream of (fewer) records.
    delete_topics(kafka_bootstrap, ns)
    ns = recreate(kafka_bootstrap, name)
    fill(kafka_bootstrap, ns, 4, 700)
    new = in_topics(kafka_bootstrap, ns)

    second = run_xchg(["sink", "timescale", "--until-caught-up"], kafka_bootstrap, ns, database)
    trades, events = stored(database)
    if second.returncode == 0:
        assert set(new[0]) <= set(trades) and set(new[1]) <= set(events), "records of the new topics lost"
    else:
        line = error_line(second)
        assert "recreated" in line and "xchg db rebuild" in line, line
        assert (trades, events) == old
    assert duplicates_counted(database) == 0


def test_a_record_colliding_with_different_values_stops_the_sink(kafka_bootstrap: str, database: Database,
                                                                 unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"idc-{unique}")
    trades = random_trades(random.Random(8), ["IC-X"], 12, 1_764_000_000_000)
    produce(kafka_bootstrap, ns, TRADES, trades[:8])
    first = run_xchg(["sink", "timescale", "--until-caught-up"], kafka_bootstrap, ns, database)
    assert first.returncode == 0, first.stderr[-3000:]
    # Next: a byte-identical replay of trade 5 (a duplicate), then trade 6 with another price (not one).
    changed = dict(trades[5], price=trades[5]["price"] + 1)
    produce(kafka_bootstrap, ns, TRADES, [trades[4], changed, *trades[8:]])

    second = run_xchg(["sink", "timescale", "--until-caught-up"], kafka_bootstrap, ns, database)
    assert second.returncode != 0, second.stderr[-3000:]
    line = error_line(second)
    assert "IC-X" in line and "6" in line, line
    stored_trades = rows(database.writer, "select trade_id, price from trades order by trade_id")
    assert stored_trades == [(t["trade_id"], t["price"]) for t in trades[:8]]  # nothing of the batch written
    offsets = rows(database.writer, "select sum(next_offset) from kafka_offsets where topic = %s", (ns(TRADES),))
    # The colliding record (offset 9, after the replay of trade 5 at 8) is not consumed: a restart
    # stops on it again.
    assert offsets[0][0] <= 9, offsets
