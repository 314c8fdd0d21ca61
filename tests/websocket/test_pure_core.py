"""Unit tests of the gateway's pure parts: checksum, book state (vs a naive reference),
depth windows, request parsing, limits, send queue, tokens, ticker window, partitioner."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.websocket import protocol
from connectors.websocket.book import MarketBook, Outcome, window_changes
from connectors.websocket.checksum import book_checksum, checksum_string
from connectors.websocket.limits import ConnectionsPerAddress, RateVerdict, RequestRate, Subscriptions
from connectors.websocket.marketstate import MarketState
from connectors.websocket.partitioning import market_partition, murmur2
from connectors.websocket.protocol import RequestError, Subscribe, SubscriptionKey
from connectors.websocket.sendqueue import Frame, SendQueue
from connectors.websocket.startup import SnapshotSearch
from connectors.websocket.ticker import TradeWindow
from connectors.websocket.tokens import TokenError, sign_token, verify_token

MARKETS = frozenset({"BTC-USD", "ETH-USD"})


# -- checksum -------------------------------------------------------------------------------------

def test_checksum_vectors() -> None:
    assert book_checksum([], []) == 0
    assert checksum_string([(100, 3)], [(101, 5), (102, 7)]) == "101510271003"
    assert book_checksum([(100, 3)], [(101, 5), (102, 7)]) == 2289664691
    bids = [(1000 - i, i + 1) for i in range(12)]
    asks = [(1001 + i, 2 * i + 1) for i in range(12)]
    text = "".join(f"{p}{q}" for p, q in asks[:10]) + "".join(f"{p}{q}" for p, q in bids[:10])
    assert book_checksum(bids, asks) == zlib.crc32(text.encode())
    assert book_checksum(bids[:10], asks[:10]) == book_checksum(bids, asks)  # only 10 levels count


# -- book ----------------------------------------------------------------------------------------

def record(book_seq: int, prev: int, changes: list[tuple[str, int, int]], snapshot: bool = False,
           part: int = 0, parts: int = 1) -> dict[str, Any]:
    return {"market": "BTC-USD", "book_seq": book_seq, "prev_book_seq": prev, "snapshot": snapshot, "seq": book_seq,
            "ts": book_seq, "changes": [{"side": s, "price": p, "qty": q} for s, p, q in changes],
            "part": part, "parts": parts}


levels = st.lists(st.tuples(st.sampled_from(["buy", "sell"]), st.integers(1, 40), st.integers(0, 5)),
                  max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(levels, st.booleans(), st.integers(1, 3)), min_size=1, max_size=25))
def test_book_equals_naive_reference(deltas: list[tuple[list[tuple[str, int, int]], bool, int]]) -> None:
    book = MarketBook("BTC-USD")
    reference: dict[str, dict[int, int]] = {"buy": {}, "sell": {}}
    seq = 0
    first = True
    for changes, snapshot, parts in deltas:
        snapshot = snapshot or first
        first = False
        unique = list({(s, p): (s, p, q) for s, p, q in changes}.values())
        prev, seq = seq, seq + 1 + len(unique)
        chunks = [unique[i::parts] for i in range(parts)]
        for i, chunk in enumerate(chunks):
            outcome, _ = book.apply(record(seq, prev, chunk, snapshot, i, parts), frozenset({10}))
            assert outcome is (Outcome.APPLIED if i == parts - 1 else Outcome.PENDING)
        if snapshot:
            reference = {"buy": {}, "sell": {}}
        for side, price, qty in unique:
            if qty:
                reference[side][price] = qty
            else:
                reference[side].pop(price, None)
        assert book.synced and book.book_seq == seq
        assert book.bids.best_first() == sorted(reference["buy"].items(), reverse=True)
        assert book.asks.best_first() == sorted(reference["sell"].items())
        assert book.bids.best_first(3) == sorted(reference["buy"].items(), reverse=True)[:3]


def test_book_gap_duplicate_and_resync() -> None:
    book = MarketBook("BTC-USD")
    assert book.apply(record(5, 0, [("buy", 10, 1)]))[0] is Outcome.WAITING  # no snapshot yet
    assert book.apply(record(6, 0, [("buy", 10, 1)], snapshot=True))[0] is Outcome.APPLIED
    assert book.apply(record(6, 0, [("buy", 10, 1)], snapshot=True))[0] is Outcome.APPLIED  # a snapshot always
    assert book.apply(record(6, 5, [("buy", 10, 2)]))[0] is Outcome.DUPLICATE
    assert book.apply(record(9, 8, [("buy", 10, 2)]))[0] is Outcome.GAP
    assert not book.synced
    assert book.apply(record(10, 9, [("buy", 11, 2)]))[0] is Outcome.WAITING
    assert book.apply(record(12, 0, [("sell", 20, 2)], snapshot=True, part=0, parts=2))[0] is Outcome.PENDING
    assert not book.synced and book.book_seq == 6  # not observable between parts
    assert book.apply(record(12, 0, [("buy", 19, 1)], snapshot=True, part=1, parts=2))[0] is Outcome.APPLIED
    assert book.synced and book.bids.best_first() == [(19, 1)] and book.asks.best_first() == [(20, 2)]
    # a new delta before the last part of a split one: lost data
    assert book.apply(record(13, 12, [("buy", 18, 1)], part=0, parts=2))[0] is Outcome.PENDING
    assert book.apply(record(14, 13, [("buy", 17, 1)]))[0] is Outcome.GAP
    assert not book.synced


def test_empty_market_is_synced_at_zero() -> None:
    book = MarketBook("BTC-USD")
    book.mark_empty_synced()
    assert book.synced and book.book_seq == 0 and book.checksum() == 0


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(1, 60), st.integers(1, 9), max_size=30), levels)
def test_depth_window_changes_keep_a_window_replica(start: dict[int, int],
                                                    changes: list[tuple[str, int, int]]) -> None:
    state = MarketState(["BTC-USD"])
    state.on_book(record(1, 0, [("buy", p, q) for p, q in start.items()], snapshot=True), set())
    replica = dict(state.books["BTC-USD"].window(10).bids)
    unique = list({(s, p): (s, p, q) for s, p, q in changes}.values())
    publication = state.on_book(record(2, 1, unique), {10, None})
    assert publication is not None
    message = orjson.loads(publication.frames[10])
    for price, qty in message["bids"]:
        if qty:
            replica[price] = qty
        else:
            replica.pop(price, None)
    assert sorted(replica.items(), reverse=True)[:10] == state.books["BTC-USD"].window(10).bids
    assert message["checksum"] == state.books["BTC-USD"].checksum()


def test_window_changes() -> None:
    assert window_changes([(10, 1), (9, 1)], [(10, 2), (8, 1)]) == [(10, 2), (8, 1), (9, 0)]


# -- requests ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("frame", "code"), [
    (b"{not json", "malformed_json"), (b"[1,2]", "malformed_json"), (b'{"op": 3}', "invalid_request"),
    (b'{"op": "dance"}', "unknown_op"), (b'{"op": "subscribe", "channel": "boook", "market": "BTC-USD"}',
                                         "unknown_channel"),
    (b'{"op": "subscribe", "channel": "book", "market": "NOPE-USD"}', "unknown_market"),
    (b'{"op": "subscribe", "channel": "book", "market": "BTC-USD", "depth": 7}', "invalid_depth"),
    (b'{"op": "subscribe", "channel": "book", "market": "BTC-USD", "depth": 10.0}', "invalid_depth"),
    (b'{"op": "subscribe", "channel": "candles", "market": "BTC-USD"}', "invalid_interval"),
    (b'{"op": "subscribe", "channel": "trades", "market": "BTC-USD", "interval": "1m"}', "invalid_request"),
    (b'{"op": "subscribe", "channel": "fills", "market": "BTC-USD"}', "invalid_request"),
    (b'{"op": "subscribe", "id": "x", "channel": "book", "market": "BTC-USD"}', "invalid_request"),
    (b'{"op": "auth"}', "invalid_request"),
])
def test_bad_requests(frame: bytes, code: str) -> None:
    result = protocol.parse_request(frame, MARKETS)
    assert isinstance(result, RequestError) and result.code == code


def test_good_requests() -> None:
    assert protocol.parse_request(b'{"op": "subscribe", "id": 4, "channel": "book", "market": "BTC-USD", '
                                  b'"depth": 25}', MARKETS) == Subscribe(4, SubscriptionKey("book", "BTC-USD"), 25)
    sub = protocol.parse_request(b'{"op": "subscribe", "channel": "candles", "market": "ETH-USD", "interval": "1h"}',
                                 MARKETS)
    assert sub == Subscribe(None, SubscriptionKey("candles", "ETH-USD", "1h"))


# -- limits, queue, tokens -----------------------------------------------------------------------

def test_request_rate_and_flood() -> None:
    rate = RequestRate(3)
    assert [rate.check(0.1 * i) for i in range(4)] == [RateVerdict.ALLOW] * 3 + [RateVerdict.LIMITED]
    assert rate.check(1.05) is RateVerdict.ALLOW  # the window slid past the first request
    flood = RequestRate(2)
    verdicts = [flood.check(0.01 * i) for i in range(11)]
    assert verdicts[-1] is RateVerdict.FLOOD and verdicts[2] is RateVerdict.LIMITED


def test_subscription_limits() -> None:
    subs = Subscriptions(2)
    a, b, c = (SubscriptionKey("book", m) for m in ("A-B", "C-D", "E-F"))
    assert subs.add(a, 10) is None and subs.add(a, None) == "already_subscribed"
    assert subs.add(b, None) is None and subs.add(c, None) == "too_many_subscriptions"
    assert subs.remove(c) == "not_subscribed" and subs.remove(a) is None and subs.add(c, None) is None
    assert subs.public_markets() == ["C-D", "E-F"]
    per_ip = ConnectionsPerAddress(1)
    assert per_ip.admit("x") and not per_ip.admit("x")
    per_ip.release("x")
    assert per_ip.admit("x")


def test_send_queue_overflow_is_final() -> None:
    queue = SendQueue(10)
    assert queue.push(Frame(b"12345", "book")) and queue.push(Frame(b"12345", "book"))
    assert [f.data for f in queue.take()] == [b"12345", b"12345"] and queue.pending_bytes == 0
    assert queue.push(Frame(b"123456", "book")) and not queue.push(Frame(b"12345", "book"))
    assert queue.overflowed and len(queue) == 0 and not queue.push(Frame(b"1", "book"))


def test_tokens() -> None:
    token = sign_token(b"k", "acct001", 10_000)
    assert verify_token(b"k", token, 5_000, 60_000) == ("acct001", 10_000)
    for bad, code, now in ((token, "token_expired", 10_000), (token[:-2] + "xx", "invalid_token", 0),
                           ("v1.a.b", "invalid_token", 0), (token, "invalid_token", -60_000)):
        with pytest.raises(TokenError) as caught:
            verify_token(b"k", bad, now, 60_000)
        assert caught.value.code == code
    with pytest.raises(TokenError):
        verify_token(b"other", token, 0, 60_000)


# -- ticker, partitioner, start-up search --------------------------------------------------------

def test_trade_window_24h() -> None:
    window = TradeWindow()
    window.add(1, 100, 5, 0)
    window.add(2, 110, 7, 60_000 * 1439)
    assert window.volume == 12 and window.open == 100 and window.last == 110
    window.add(3, 120, 1, 60_000 * 1440)  # minute 0 leaves the window
    assert window.volume == 8 and window.open == 110
    window.add(3, 999, 1, 60_000 * 1441)  # read twice: ignored
    assert window.volume == 8 and window.last_trade_id == 3


def test_murmur2_matches_kafka() -> None:
    # Vectors of Kafka's Java client (org.apache.kafka.common.utils.Utils.murmur2).
    assert murmur2(b"21") & 0xFFFFFFFF == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") & 0xFFFFFFFF == (-790332482) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-long-string") & 0xFFFFFFFF == (-985981536) & 0xFFFFFFFF
    assert 0 <= market_partition("BTC-USD", 4) < 4


def test_snapshot_search_stops_at_latest_snapshots() -> None:
    search = SnapshotSearch({"A-B", "C-D"})
    chunk = [(10, {"market": "A-B", "snapshot": True, "part": 0}), (11, {"market": "A-B", "snapshot": False}),
             (12, {"market": "A-B", "snapshot": True, "part": 0})]
    assert not search.visit(chunk) and search.found == {"A-B": 12}
    assert search.visit([(3, {"market": "C-D", "snapshot": True, "part": 0})])
    assert search.start(100) == 3
