"""The client's pure decisions without services: the local book and its resync verdicts, the
heartbeat check, the trade sequence and the backoff; the book is also checked against the
gateway's own book (``connectors.websocket.book.MarketBook``) over random delta streams."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.websocket.book import MarketBook
from connectors.websocket.checksum import book_checksum
from connectors.websocket.client import endpoints
from connectors.websocket.clientcore import (
    LocalBook,
    TradeOutcome,
    TradeSequence,
    Verdict,
    backoff_delay,
    heartbeat_shows_loss,
)
from connectors.websocket.marketstate import book_frames


def book_message(book_seq: int, prev: int, bids: list[list[int]], asks: list[list[int]], snapshot: bool,
                 checksum: int) -> dict[str, Any]:
    return {"type": "book", "market": "BTC-USD", "snapshot": snapshot, "book_seq": book_seq,
            "prev_book_seq": prev, "depth": None, "bids": bids, "asks": asks, "checksum": checksum, "ts": 1}


def snapshot_of(bids: list[tuple[int, int]], asks: list[tuple[int, int]], book_seq: int) -> dict[str, Any]:
    return book_message(book_seq, 0, [list(x) for x in bids], [list(x) for x in asks], True,
                        book_checksum(bids, asks))


def test_snapshot_then_chained_updates_apply() -> None:
    book = LocalBook("BTC-USD")
    assert not book.valid
    assert book.apply(snapshot_of([(100, 3)], [(101, 5), (102, 7)], 10)) is Verdict.APPLIED
    assert book.book_seq == 10 and book.checksum() == 2289664691
    # 100 removed, 99 added: the checksum of the book after the update.
    after = book_checksum([(99, 4)], [(101, 5), (102, 7)])
    assert book.apply(book_message(11, 10, [[100, 0], [99, 4]], [], False, after)) is Verdict.APPLIED
    assert book.best_bids() == [(99, 4)] and book.best_asks() == [(101, 5), (102, 7)] and book.book_seq == 11


def test_gap_mismatch_and_update_before_snapshot_invalidate() -> None:
    book = LocalBook("BTC-USD")
    assert book.apply(book_message(5, 4, [[1, 1]], [], False, 0)) is Verdict.NO_SNAPSHOT
    book.apply(snapshot_of([(100, 3)], [(101, 5)], 10))
    assert book.apply(book_message(13, 12, [], [], False, book.checksum())) is Verdict.GAP
    assert not book.valid and book.best_bids() == []
    book.apply(snapshot_of([(100, 3)], [(101, 5)], 10))
    assert book.apply(book_message(11, 10, [[100, 4]], [], False, 12345)) is Verdict.CHECKSUM_MISMATCH
    assert not book.valid
    # A snapshot is applied whatever its prev_book_seq, also after a loss.
    assert book.apply(snapshot_of([(90, 1)], [], 20)) is Verdict.APPLIED and book.book_seq == 20


def test_floats_and_bad_shapes_are_malformed() -> None:
    book = LocalBook("BTC-USD")
    book.apply(snapshot_of([(100, 3)], [], 1))
    assert book.apply(book_message(2, 1, [[100.0, 3]], [], False, 0)) is Verdict.MALFORMED  # type: ignore[list-item]
    assert not book.valid
    assert book.apply({"type": "book", "snapshot": True, "book_seq": "7"}) is Verdict.MALFORMED
    assert book.load_snapshot({"book_seq": 3, "bids": [[1, 2, 3]], "asks": [], "checksum": 0}) is Verdict.MALFORMED


def test_depth_window_trims_levels_beyond_depth() -> None:
    book = LocalBook("BTC-USD", depth=10)
    bids = [(1000 - i, 1) for i in range(10)]
    book.apply(snapshot_of(bids, [], 1))
    # The best bid goes; the level that enters the window (990) is sent with its qty.
    after = [*bids[1:], (990, 2)]
    assert book.apply(book_message(2, 1, [[1000, 0], [990, 2]], [], False, book_checksum(after, []))) \
        is Verdict.APPLIED
    assert book.best_bids() == after
    # A better bid pushes 990 out of the window: the client drops it itself.
    pushed = [(1001, 1), *after[:-1]]
    assert book.apply(book_message(3, 2, [[1001, 1], [990, 0]], [], False, book_checksum(pushed, []))) \
        is Verdict.APPLIED
    assert book.best_bids() == pushed


def test_rest_snapshot_loads() -> None:
    book = LocalBook("BTC-USD")
    body = {"market": "BTC-USD", "book_seq": 42, "prev_book_seq": 41, "depth": None, "bids": [[100, 3]],
            "asks": [[101, 5], [102, 7]], "checksum": 2289664691, "ts": 9}
    assert book.load_snapshot(body) is Verdict.APPLIED and book.book_seq == 42 and book.ts == 9
    assert book.load_snapshot({**body, "checksum": 1}) is Verdict.CHECKSUM_MISMATCH and not book.valid


def test_heartbeat_ahead_of_the_book_shows_a_loss() -> None:
    book = LocalBook("BTC-USD")
    assert not heartbeat_shows_loss(book, {"type": "heartbeat", "book_seq": {"BTC-USD": 9}})  # not valid yet
    book.apply(snapshot_of([], [], 7))
    assert not heartbeat_shows_loss(book, {"type": "heartbeat", "book_seq": {"BTC-USD": 7}})
    assert not heartbeat_shows_loss(book, {"type": "heartbeat", "book_seq": {"ETH-USD": 90}})
    assert heartbeat_shows_loss(book, {"type": "heartbeat", "book_seq": {"BTC-USD": 8}})


def test_trade_sequence_dedupes_and_names_gaps() -> None:
    trades = TradeSequence()
    assert trades.check(17) is TradeOutcome.NEW and trades.deliver(17)
    assert trades.check(17) is TradeOutcome.DUPLICATE and not trades.deliver(17)
    assert trades.check(18) is TradeOutcome.NEW and trades.deliver(18)
    assert trades.check(21) is TradeOutcome.AFTER_GAP
    assert trades.check(3) is TradeOutcome.DUPLICATE


def test_backoff_is_capped_jittered_and_exponential() -> None:
    assert backoff_delay(0, 0.1, 5.0, lambda: 0.999999) == pytest.approx(0.1, rel=1e-3)
    assert backoff_delay(3, 0.1, 5.0, lambda: 0.5) == pytest.approx(0.4)
    assert backoff_delay(10, 0.1, 5.0, lambda: 0.999999) <= 5.0
    assert backoff_delay(10_000, 0.1, 5.0, lambda: 1.0) == 5.0
    assert backoff_delay(2, 0.1, 5.0, lambda: 0.0) == 0.0
    rng = random.Random(7)
    delays = [backoff_delay(4, 0.1, 5.0, rng.random) for _ in range(200)]
    assert all(0 <= d < 1.6 for d in delays) and len(set(delays)) > 150, "jittered"
    with pytest.raises(ValueError):
        backoff_delay(-1, 0.1, 5.0, rng.random)


def test_endpoints() -> None:
    assert endpoints("http://127.0.0.1:18080") == ("http://127.0.0.1:18080", "ws://127.0.0.1:18080/v1/ws")
    assert endpoints("wss://feed.example/v1/ws") == ("https://feed.example", "wss://feed.example/v1/ws")
    with pytest.raises(ValueError):
        endpoints("ftp://x")


changes = st.lists(st.tuples(st.sampled_from(["buy", "sell"]), st.integers(90, 110), st.integers(0, 5)),
                   min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(st.lists(changes, min_size=1, max_size=25), st.sampled_from([None, 10]))
def test_local_book_follows_the_gateway_book(deltas: list[list[tuple[str, int, int]]], depth: int | None) -> None:
    """The gateway's book publishes each delta (windowed like the server does); the client's
    book applies them and agrees with the gateway's window and checksum after every message."""
    gateway = MarketBook("BTC-USD")
    gateway.apply({"market": "BTC-USD", "book_seq": 1, "prev_book_seq": 0, "snapshot": True, "changes": []})
    client = LocalBook("BTC-USD", depth)
    window = gateway.window(depth)
    assert client.apply(book_message(1, 0, [list(x) for x in window.bids], [list(x) for x in window.asks], True,
                                     gateway.checksum())) is Verdict.APPLIED
    seq = 1
    for delta in deltas:
        last_per_level = {(s, p): q for s, p, q in delta}  # a delta changes a level at most once
        record = {"market": "BTC-USD", "book_seq": seq + 1, "prev_book_seq": seq, "snapshot": False,
                  "changes": [{"side": s, "price": p, "qty": q} for (s, p), q in last_per_level.items()]}
        _, applied = gateway.apply(record, frozenset({depth} if depth else set()))
        assert applied is not None
        seq += 1
        frame = book_frames(gateway, applied, {depth})[depth]
        assert client.apply(orjson.loads(frame)) is Verdict.APPLIED
        window = gateway.window(depth)
        assert client.best_bids() == window.bids and client.best_asks() == window.asks
