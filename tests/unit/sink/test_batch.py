"""The sink's pure core, without a database or a broker: consumed records become table rows,
candidates for the stored-row comparison, input anomalies, rejections and offsets (``batch.py``),
in the shape of the tables the sink writes (``tables.py``); a dead letter the topic does not
acknowledge is retried like a database outage (``errors.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from confluent_kafka import Message

from connectors.timescale.batch import Anomaly, Batch, Preparer
from connectors.timescale.errors import (
    DeadLetterUnacknowledged,
    RecordConflict,
    SinkError,
    is_data_error,
    is_transient,
)
from connectors.timescale.records import FINAL, LAST_TRADE_ID, digest
from connectors.timescale.tables import (
    CANDLES_TABLE,
    EVENT_JOURNAL,
    EVENTS_TABLE,
    SNAPSHOTS_TABLE,
    TRADE_JOURNAL,
    TRADES_TABLE,
    Journal,
    candle_row,
    event_row,
    snapshot_row,
    trade_row_reader,
    utc_from_ms,
)
from streams.runtime.namespace import Namespace
from streams.serde.codec import Codec
from streams.serde.topics import MD_BOOK, MD_CANDLES, ORDERS_EVENTS, TRADES

CODEC = Codec()
NS = Namespace("unit.")
T0 = 1_764_000_000_000


class Topic:
    """Records of one partition of a topic of ``NS``, with consecutive offsets."""

    def __init__(self, logical: str, partition: int = 0, offset: int = 0) -> None:
        self.logical, self.partition, self.offset = logical, partition, offset

    def record(self, value: Mapping[str, Any] | bytes) -> Message:
        data = value if isinstance(value, bytes) else CODEC.encode(self.logical, dict(value))
        message = Message(topic=NS(self.logical), partition=self.partition, offset=self.offset, value=data,
                          key=b"k")
        self.offset += 1
        return message


def trade(market: str, trade_id: int, ts: int = T0) -> dict[str, Any]:
    return {"market": market, "trade_id": trade_id, "seq": trade_id * 3, "ts": ts, "price": 100, "qty": 2,
            "maker_order_id": f"m{trade_id}", "maker_account": "a1", "taker_order_id": f"t{trade_id}",
            "taker_account": "a2", "taker_side": "buy", "command_id": f"c{trade_id}", "input_partition": 0,
            "input_offset": trade_id}


def event(market: str, seq: int, ts: int = T0) -> dict[str, Any]:
    return {"market": market, "seq": seq, "ts": ts, "command_id": f"c{seq}", "input_partition": 0,
            "input_offset": seq, "body": ("xchg.v1.OrderCancelled",
                                          {"order_id": f"o{seq}", "account": "a1", "qty": 5, "reason": "user"})}


def candle(last_trade_id: int, close: int, final: bool = False, window_start: int = T0) -> dict[str, Any]:
    return {"market": "M", "interval": "1m", "window_start": window_start, "open": 100, "high": max(100, close),
            "low": min(100, close), "close": close, "volume": last_trade_id, "quote_volume": Decimal(100 * last_trade_id),
            "trade_count": last_trade_id, "first_trade_id": 1, "last_trade_id": last_trade_id, "final": final}


def delta(book_seq: int, prev: int, ts: int, changes: list[tuple[str, int, int]], snapshot: bool = False,
          market: str = "M") -> dict[str, Any]:
    return {"market": market, "book_seq": book_seq, "prev_book_seq": prev, "snapshot": snapshot, "seq": book_seq,
            "ts": ts, "input_partition": 0, "input_offset": book_seq,
            "changes": [{"side": s, "price": p, "qty": q} for s, p, q in changes], "part": 0, "parts": 1}


class StoredCounters:
    """``StoredLast`` over a dict; remembers what it was asked."""

    def __init__(self, stored: dict[str, dict[str, int]] | None = None) -> None:
        self.stored = stored or {}
        self.asked: list[tuple[str, list[str]]] = []

    def __call__(self, journal: Journal, markets: list[str]) -> Mapping[str, int]:
        self.asked.append((journal.name, markets))
        table = self.stored.get(journal.name, {})
        return {m: table[m] for m in markets if m in table}


def preparer(rereading_before_ms: int | None = None) -> Preparer:
    return Preparer(CODEC, NS, "unit-sink", book_snapshot_interval_s=60, rereading_before_ms=rereading_before_ms)


# -- the tables ----------------------------------------------------------------------------------------


def test_every_row_builder_fills_its_table_in_column_order() -> None:
    trades = Topic(TRADES)
    row = trade_row_reader(CODEC)(trades.record(trade("M", 1)).value())
    assert len(row) == len(TRADES_TABLE.columns)
    assert row[TRADES_TABLE.position("ts")] == utc_from_ms(T0)
    assert row[TRADES_TABLE.position("taker_order_id")] == "t1"
    ev = event_row(CODEC.decode(ORDERS_EVENTS, CODEC.encode(ORDERS_EVENTS, event("M", 4))))
    assert len(ev) == len(EVENTS_TABLE.columns)
    assert ev[EVENTS_TABLE.position("event_type")] == "OrderCancelled"
    c = candle_row(candle(7, 99, final=True))
    assert len(c) == len(CANDLES_TABLE.columns)
    assert (c[LAST_TRADE_ID], c[FINAL]) == (7, True)
    assert len(CANDLES_TABLE.columns) - 1 == FINAL  # candle_fold rebuilds a row up to its final flag
    s = snapshot_row(("M", T0, 3, [[100, 1]], [[101, 2]]))
    assert len(s) == len(SNAPSHOTS_TABLE.columns) and s[SNAPSHOTS_TABLE.position("book_seq")] == 3


def test_a_journal_is_written_with_the_digest_of_its_record_last() -> None:
    for journal, table in ((TRADE_JOURNAL, TRADES_TABLE), (EVENT_JOURNAL, EVENTS_TABLE)):
        assert journal.name == table.name
        assert journal.written.names == (*table.names, "record_digest")
        assert journal.written.types == (*table.types, "bytea")
        assert journal.key in table.names and table.position("market") == 0 and table.position(journal.key) == 1


# -- trades and order events ---------------------------------------------------------------------------


def test_trades_in_sequence_are_rows_with_their_digest_and_advance_the_offsets() -> None:
    trades, events = Topic(TRADES, partition=2, offset=40), Topic(ORDERS_EVENTS, partition=1, offset=7)
    messages = [trades.record(trade("M", i)) for i in (1, 2, 3)] + [events.record(event("M", 1))]
    batch = preparer().prepare(messages, StoredCounters())
    assert [(r[0], r[1]) for r in batch.trades] == [("M", 1), ("M", 2), ("M", 3)]
    assert [r[-1] for r in batch.trades] == [digest(m.value()) for m in messages[:3]]
    assert batch.trade_src == messages[:3]
    assert [(r[0], r[1]) for r in batch.events] == [("M", 1)] and batch.event_src == messages[3:]
    assert batch.offsets == {("unit.trades", 2): 43, ("unit.orders.events", 1): 8}
    assert batch.records == 4
    assert not (batch.anomalies or batch.rejected or batch.trade_candidates or batch.event_candidates)


def test_a_gap_is_an_anomaly_and_its_record_still_a_row() -> None:
    trades = Topic(TRADES)
    batch = preparer().prepare([trades.record(trade("M", 1)), trades.record(trade("M", 4))], StoredCounters())
    assert [r[1] for r in batch.trades] == [1, 4]
    assert batch.anomalies == [Anomaly(TRADES, "M", "gap", 2, 4, 0, 1)]
    assert batch.anomalies[0].row("unit-sink") == ("unit-sink", TRADES, "M", "gap", 2, 4, 0, 1)


def test_a_counter_already_seen_is_a_candidate_for_the_stored_rows_to_decide() -> None:
    trades, events = Topic(TRADES), Topic(ORDERS_EVENTS)
    p = preparer()
    p.prepare([trades.record(trade("M", 1)), trades.record(trade("M", 2)), events.record(event("M", 1))],
              StoredCounters())
    again = trades.record(trade("M", 2))
    batch = p.prepare([again, events.record(event("M", 1))], StoredCounters())
    assert not batch.trades and not batch.events and not batch.anomalies
    (c,) = batch.trade_candidates
    assert (c.key, c.expected, c.expected_stored, c.source, c.digest) == (("M", 2), 3, False, again,
                                                                         digest(again.value()))
    assert c.repeat  # found stored byte for byte, it is an input anomaly (a duplicate)
    (e,) = batch.event_candidates
    assert (e.key, e.expected) == (("M", 1), 2)


def test_a_record_a_rebuild_rereads_on_purpose_is_no_repeat() -> None:
    trades, events = Topic(TRADES), Topic(ORDERS_EVENTS)
    stored = StoredCounters({"trades": {"M": 5}, "order_events": {"M": 5}})
    batch = preparer(rereading_before_ms=T0 + 1).prepare(
        [trades.record(trade("M", 3, ts=T0)), trades.record(trade("M", 4, ts=T0 + 1)),
         events.record(event("M", 3, ts=T0))], stored)
    assert [(c.key[1], c.expected_stored, c.repeat) for c in batch.trade_candidates] == [(3, True, False),
                                                                                       (4, False, True)]
    assert [(c.key[1], c.expected_stored) for c in batch.event_candidates] == [(3, True)]


def test_the_trackers_resume_from_the_stored_counters_once_per_market() -> None:
    trades = Topic(TRADES)
    stored = StoredCounters({"trades": {"M": 5}})
    p = preparer()
    batch = p.prepare([trades.record(trade("M", 6)), trades.record(trade("N", 1))], stored)
    assert [(r[0], r[1]) for r in batch.trades] == [("M", 6), ("N", 1)] and not batch.anomalies
    p.prepare([trades.record(trade("M", 7)), trades.record(trade("N", 2))], stored)
    assert stored.asked == [("trades", ["M", "N"])]
    stored.stored["trades"]["M"] = 7  # the batches were written
    p.restore({})  # a reconnect reads the database again
    batch = p.prepare([trades.record(trade("M", 6))], stored)
    assert stored.asked[-1] == ("trades", ["M"]) and [c.key for c in batch.trade_candidates] == [("M", 6)]


def test_a_failed_look_up_of_the_stored_counters_can_be_retried_with_the_same_records() -> None:
    trades = Topic(TRADES)
    messages = [trades.record(trade("M", 6)), trades.record(trade("M", 7))]
    p = preparer()

    def down(journal: Journal, markets: list[str]) -> Mapping[str, int]:
        raise psycopg.OperationalError("server closed the connection")

    with pytest.raises(psycopg.OperationalError):
        p.prepare(messages, down)
    batch = p.prepare(messages, StoredCounters({"trades": {"M": 5}}))
    assert [r[1] for r in batch.trades] == [6, 7] and not batch.anomalies


# -- what no row can hold ---------------------------------------------------------------------------------


def test_undecodable_and_invalid_records_are_rejected_and_their_offsets_advanced() -> None:
    trades, events = Topic(TRADES), Topic(ORDERS_EVENTS)
    garbage = trades.record(b"\x00not avro")
    out_of_range = trades.record(trade("M", 1, ts=2**62))  # no datetime holds this time
    good = trades.record(trade("M", 1))
    bad_event = events.record(b"")
    batch = preparer().prepare([garbage, out_of_range, good, bad_event], StoredCounters())
    assert [(r.message, r.reason.split(":")[0]) for r in batch.rejected] == [
        (garbage, "undecodable"), (out_of_range, "invalid"), (bad_event, "undecodable")]
    assert [r[1] for r in batch.trades] == [1]
    assert batch.offsets == {("unit.trades", 0): 3, ("unit.orders.events", 0): 1}


# -- candles ----------------------------------------------------------------------------------------------


def test_the_updates_of_a_window_fold_into_one_row() -> None:
    candles = Topic(MD_CANDLES)
    messages = [candles.record(candle(3, 101)), candles.record(candle(5, 104)), candles.record(candle(4, 90)),
                candles.record(candle(5, 104, final=True)), candles.record(candle(1, 100, window_start=T0 + 60_000))]
    batch = preparer().prepare(messages, StoredCounters())
    assert len(batch.candles) == 2
    row = batch.candles[("M", "1m", T0)]
    assert (row[LAST_TRADE_ID], row[CANDLES_TABLE.position("close")], row[FINAL]) == (5, 104, True)
    assert batch.candle_src[("M", "1m", T0)] is messages[3]
    assert batch.offsets == {("unit.md.candles", 0): 5}


def test_one_version_of_a_window_with_other_values_stops_the_sink() -> None:
    candles = Topic(MD_CANDLES)
    with pytest.raises(RecordConflict, match=r"two histories of one candle") as stop:
        preparer().prepare([candles.record(candle(5, 104)), candles.record(candle(5, 99))], StoredCounters())
    assert "unit.md.candles[0]@1" in str(stop.value) and "\n" not in str(stop.value)


# -- the L2 book ------------------------------------------------------------------------------------------


def test_the_book_fold_takes_snapshots_and_keeps_the_complete_books() -> None:
    books = Topic(MD_BOOK)
    p = preparer()
    batch = p.prepare([books.record(delta(1, 0, T0, [("buy", 100, 3)])),
                       books.record(delta(2, 1, T0 + 1_000, [("sell", 101, 2)])),
                       books.record(delta(3, 2, T0 + 60_000, [("buy", 100, 0)]))], StoredCounters())
    assert [(s[0], s[1], s[2]) for s in batch.snapshots] == [("M", utc_from_ms(T0), 1),
                                                               ("M", utc_from_ms(T0 + 60_000), 3)]
    assert batch.snapshots[1][3].obj == [] and batch.snapshots[1][4].obj == [[101, 2]]
    assert not batch.anomalies
    ((consumer, market, seq, bucket, bids, asks, pending),) = batch.book_rows
    assert (consumer, market, seq, bucket, bids, asks, pending) == (
        "unit-sink", "M", 3, (T0 + 60_000) // 60_000, "[]", "[[101, 2]]", None)


def test_a_chain_break_is_an_anomaly_and_a_book_cut_off_is_not_stored() -> None:
    books = Topic(MD_BOOK)
    p = preparer()
    # The market's history starts after retention removed its first deltas: not complete.
    batch = p.prepare([books.record(delta(5, 4, T0, [("buy", 100, 3)]))], StoredCounters())
    assert not batch.snapshots and not batch.book_rows and not batch.anomalies
    batch = p.prepare([books.record(delta(7, 6, T0 + 1, [("buy", 99, 1)]))], StoredCounters())
    assert batch.anomalies == [Anomaly(MD_BOOK, "M", "book_break", 5, 6, 0, 1)]
    batch = p.prepare([books.record(delta(8, 7, T0 + 2, [("sell", 101, 1)], snapshot=True))], StoredCounters())
    assert [s[2] for s in batch.snapshots] == [8] and [r[1] for r in batch.book_rows] == ["M"]


def test_a_restored_book_goes_on_from_where_it_was_stored() -> None:
    books = Topic(MD_BOOK)
    first = preparer()
    first.prepare([books.record(delta(1, 0, T0, [("buy", 100, 3)]))], StoredCounters())
    stored = first.books
    second = preparer()
    second.restore(stored)
    batch = second.prepare([books.record(delta(2, 1, T0 + 60_000, [("sell", 101, 2)]))], StoredCounters())
    assert not batch.anomalies and [s[2] for s in batch.snapshots] == [2]


def test_an_empty_batch_advances_nothing() -> None:
    assert preparer().prepare([], StoredCounters()) == Batch()


# -- the dead letters -------------------------------------------------------------------------------------


def test_an_unacknowledged_dead_letter_is_retried_like_an_outage_not_skipped_as_data() -> None:
    error = DeadLetterUnacknowledged("dead-letter topic: 3 record(s) not acknowledged")
    assert is_transient(error) and not is_data_error(error)
    assert isinstance(error, SinkError) and not isinstance(error, psycopg.Error)
