"""The ticker fold (streams/processors/ticker.py) against naive references, with hypothesis:

- the 24 h figures equal an aggregation over the full trade list (the trades whose minute is one
  of the 1440 ending with the last trade's), the last price is the last trade's;
- the best bid/ask equal those of the true book, rebuilt from the level changes themselves, after
  md.book records as the engine writes them (a snapshot first and after each "restart", deltas
  split into parts by the engine's own splitter);
- re-folding records already folded (an at-least-once replay after a restart, the state having
  gone through JSON) changes nothing and reports no change;
- how the two input streams are interleaved does not change the final ticker;
- the state stays bounded (at most 1440 minute buckets).
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.commands import Side
from streams.processors.matching import book_records
from streams.processors.ticker import (
    MINUTE,
    WINDOW_MINUTES,
    fold,
    fold_all,
    fold_book,
    fold_trade,
    new_state,
    ticker,
    to_record,
)
from streams.serde.codec import Codec
from streams.serde.topics import MD_TICKER

T0 = 1_767_268_800_000  # 2026-01-01T12:00:00Z
MARKET = "TK-A"


def naive_trade_figures(trades: list[dict[str, Any]]) -> dict[str, Any]:
    """The trade half of the ticker, straight from the trade list (ids ascending)."""
    if not trades:
        return {"last_price": None, "last_qty": None, "last_trade_id": 0, "window_start": None, "open_24h": None,
                "high_24h": None, "low_24h": None, "change_24h": None, "volume_24h": 0, "quote_volume_24h": 0,
                "trade_count_24h": 0}
    effective, latest = [], None
    for t in trades:  # the engine's clamp: a trade never happens before the previous one
        latest = t["ts"] if latest is None else max(latest, t["ts"])
        effective.append((latest, t))
    assert latest is not None
    last_minute = latest - latest % MINUTE
    start = last_minute - (WINDOW_MINUTES - 1) * MINUTE
    inside = [t for at, t in effective if start <= at - at % MINUTE <= last_minute]
    last = trades[-1]
    return {
        "last_price": last["price"], "last_qty": last["qty"], "last_trade_id": last["trade_id"],
        "window_start": start, "open_24h": inside[0]["price"],
        "high_24h": max(t["price"] for t in inside), "low_24h": min(t["price"] for t in inside),
        "change_24h": last["price"] - inside[0]["price"],
        "volume_24h": sum(t["qty"] for t in inside), "quote_volume_24h": sum(t["price"] * t["qty"] for t in inside),
        "trade_count_24h": len(inside),
    }


def trade_list(steps: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    out, ts = [], T0
    for i, (step, price, qty) in enumerate(steps, start=1):
        ts += step
        out.append({"market": MARKET, "trade_id": i, "ts": ts, "price": price, "qty": qty})
    return out


# Steps between trades: mostly within a minute, some across hours, some past a whole day, and a
# few backwards (a time the engine would clamp).
STEP = st.one_of(st.integers(0, 5_000), st.integers(0, 3_600_000), st.integers(20 * 3_600_000, 30 * 3_600_000),
                 st.integers(-2_000, 0))
TRADES = st.lists(st.tuples(STEP, st.integers(1, 10**6), st.integers(1, 10**9)), max_size=150)


@settings(max_examples=150, deadline=None)
@given(TRADES)
def test_trade_figures_equal_the_naive_aggregation(steps: list[tuple[int, int, int]]) -> None:
    trades = trade_list(steps)
    state = new_state(MARKET)
    for i, t in enumerate(trades):
        assert fold_trade(state, t)
        assert len(state["buckets"]) <= WINDOW_MINUTES
        got = ticker(state)
        assert {k: got[k] for k in naive_trade_figures(trades[: i + 1])} == naive_trade_figures(trades[: i + 1])
    assert ticker(state)["ts"] == max((t["ts"] for t in trades), default=0)


def test_the_window_keeps_1440_buckets_at_most() -> None:
    state = new_state(MARKET)
    trades = [{"market": MARKET, "trade_id": i + 1, "ts": T0 + i * MINUTE, "price": 100 + i % 7, "qty": 1}
              for i in range(3 * WINDOW_MINUTES)]
    for t in trades:
        fold_trade(state, t)
        assert len(state["buckets"]) <= WINDOW_MINUTES
    tick = ticker(state)
    assert len(state["buckets"]) == WINDOW_MINUTES
    assert tick["trade_count_24h"] == WINDOW_MINUTES and tick["volume_24h"] == WINDOW_MINUTES
    assert tick["window_start"] == trades[-WINDOW_MINUTES]["ts"]
    # One minute later the oldest minute leaves the window.
    fold_trade(state, {"market": MARKET, "trade_id": len(trades) + 1, "ts": T0 + len(trades) * MINUTE,
                       "price": 1, "qty": 5})
    assert ticker(state)["trade_count_24h"] == WINDOW_MINUTES and ticker(state)["low_24h"] == 1


# -- the book ----------------------------------------------------------------------------------------


def book_flow(rng: random.Random, steps: int, per_record: int) -> tuple[list[dict[str, Any]], list[dict[str, int]]]:
    """md.book records as the engine writes them, and the true book after each complete delta.

    The true book is kept as (side, price) -> qty from the level changes; the records come from
    the engine's own ``book_records`` (split into parts of ``per_record`` changes)."""
    book: dict[tuple[Side, int], int] = {}
    records: list[dict[str, Any]] = []
    truths: list[dict[str, int]] = []
    seq, prev, ts = 0, 0, T0
    restart = True  # the first delta is a snapshot, as after every engine restart
    for _ in range(steps):
        seq += rng.randint(1, 4)
        ts += rng.randint(0, 10_000)
        changed: dict[tuple[Side, int], int] = {}
        for _ in range(rng.randint(0, 6)):
            side = rng.choice((Side.BUY, Side.SELL))
            price = rng.randint(90, 100) if side is Side.BUY else rng.randint(95, 110)
            qty = rng.choice((0, 0, rng.randint(1, 50)))
            changed[(side, price)] = qty
        for level, qty in changed.items():
            if qty:
                book[level] = qty
            else:
                book.pop(level, None)
        if restart:
            changes = [(side, price, qty) for (side, price), qty in sorted(book.items(), key=lambda kv: kv[0][1])]
        else:
            changes = [(side, price, qty) for (side, price), qty in changed.items()]
        records.extend(book_records(MARKET, seq, 0 if restart else prev, restart, ts, 0, seq, changes,
                                    per_record=per_record))
        bids = [p for (s, p) in book if s is Side.BUY]
        asks = [p for (s, p) in book if s is Side.SELL]
        best_bid, best_ask = max(bids, default=None), min(asks, default=None)
        truths.append({"book_seq": seq, "best_bid": best_bid, "best_ask": best_ask,
                       "bid_qty": None if best_bid is None else book[(Side.BUY, best_bid)],
                       "ask_qty": None if best_ask is None else book[(Side.SELL, best_ask)], "ts": ts})
        prev = seq
        restart = rng.random() < 0.1
    return records, truths


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 80), st.integers(1, 4))
def test_best_bid_ask_equal_the_true_book(seed: int, steps: int, per_record: int) -> None:
    records, truths = book_flow(random.Random(seed), steps, per_record)
    state = new_state(MARKET)
    done = iter(truths)
    for record in records:
        completes = record["part"] + 1 == record["parts"]
        assert fold_book(state, record) == completes
        if completes:
            want = next(done)
            got = ticker(state)
            assert {k: got[k] for k in want} == want
    assert state["breaks"] == 0
    assert next(done, None) is None


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60), st.integers(1, 3), TRADES, st.data())
def test_replays_after_a_restart_change_nothing_and_interleaving_does_not_matter(
        seed: int, steps: int, per_record: int, trade_steps: list[tuple[int, int, int]], data: st.DataObject) -> None:
    rng = random.Random(seed)
    deltas, _ = book_flow(rng, steps, per_record)
    trades = trade_list(trade_steps)
    inputs = [("trades", t) for t in trades] + [("md.book", d) for d in deltas]
    # A random interleaving that keeps each stream in its own order.
    streams = {"trades": [i for i in inputs if i[0] == "trades"], "md.book": [i for i in inputs if i[0] == "md.book"]}
    order: list[tuple[str, dict[str, Any]]] = []
    while streams["trades"] or streams["md.book"]:
        name = rng.choice([n for n, rest in streams.items() if rest])
        order.append(streams[name].pop(0))
    state = new_state(MARKET)
    folded = {"trades": 0, "md.book": 0}
    restarts = data.draw(st.lists(st.integers(0, len(order)), max_size=4), label="restarts")
    for position, (topic, record) in enumerate(order):
        if position in restarts:
            # A restart: the state comes back through JSON (the changelog), and the input is read
            # again from some earlier point of each stream: all of it already folded.
            state = json.loads(json.dumps(state))
            before = json.dumps(state, sort_keys=True)
            for name, count in folded.items():
                stream = [r for n, r in order if n == name][:count]
                back = data.draw(st.integers(0, len(stream)), label=f"replay {name}")
                for again in stream[len(stream) - back:]:
                    assert not fold(state, name, again)
            assert json.dumps(state, sort_keys=True) == before
        fold(state, topic, record)
        folded[topic] += 1
    final = ticker(state)
    assert final == fold_all(trades, deltas).get(MARKET, ticker(new_state(MARKET)))
    assert {k: final[k] for k in naive_trade_figures(trades)} == naive_trade_figures(trades)
    assert final["ts"] == max([t["ts"] for t in trades] + [d["ts"] for d in deltas] + [0])


def test_lost_deltas_and_unfinished_parts_are_counted_as_breaks() -> None:
    state = new_state(MARKET)
    base = {"market": MARKET, "seq": 0, "ts": T0, "input_partition": 0, "input_offset": 0}
    buy = {"side": "buy", "price": 100, "qty": 5}
    assert fold_book(state, {**base, "book_seq": 3, "prev_book_seq": 0, "snapshot": True, "changes": [buy],
                             "part": 0, "parts": 1})
    # prev_book_seq 4 but 3 was the last applied: a lost delta, still applied (absolute levels).
    assert fold_book(state, {**base, "book_seq": 6, "prev_book_seq": 4, "snapshot": False,
                             "changes": [{"side": "sell", "price": 105, "qty": 2}], "part": 0, "parts": 1})
    assert state["breaks"] == 1 and ticker(state)["best_ask"] == 105
    # Part 0 of 2, then another delta: the first never completed.
    assert not fold_book(state, {**base, "book_seq": 7, "prev_book_seq": 6, "snapshot": False,
                                 "changes": [{"side": "buy", "price": 101, "qty": 1}], "part": 0, "parts": 2})
    assert ticker(state)["best_bid"] == 100 and ticker(state)["book_seq"] == 6  # mid-delta: not yet
    assert fold_book(state, {**base, "book_seq": 8, "prev_book_seq": 7, "snapshot": False,
                             "changes": [], "part": 0, "parts": 1})
    assert state["breaks"] == 2 and ticker(state)["best_bid"] == 101 and ticker(state)["book_seq"] == 8
    # A snapshot replaces the book.
    assert fold_book(state, {**base, "book_seq": 20, "prev_book_seq": 0, "snapshot": True,
                             "changes": [{"side": "buy", "price": 90, "qty": 9}], "part": 0, "parts": 1})
    tick = ticker(state)
    assert (tick["best_bid"], tick["bid_qty"], tick["best_ask"], tick["ask_qty"]) == (90, 9, None, None)
    assert state["breaks"] == 2


def test_the_ticker_encodes_as_the_avro_record() -> None:
    codec = Codec()
    state = new_state(MARKET)
    assert codec.decode(MD_TICKER, codec.encode(MD_TICKER, to_record(ticker(state))))["last_trade_id"] == 0
    big = 4 * 10**18  # price * qty beyond a long: the quote volume is a decimal
    fold_trade(state, {"market": MARKET, "trade_id": 1, "ts": T0, "price": big, "qty": big})
    decoded = codec.decode(MD_TICKER, codec.encode(MD_TICKER, to_record(ticker(state))))
    assert int(decoded["quote_volume_24h"]) == big * big and decoded["change_24h"] == 0
