"""The ticker channel and ``GET /v1/ticker`` serve a market's latest ``md.ticker`` record when the
topic has one (read at start and live), and the gateway's own computation for a market without
one; an older record never replaces a newer one."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from connectors.websocket.ticker import TradeWindow, ticker_message
from streams.runtime.clients import make_producer
from streams.serde.codec import Codec
from streams.serde.topics import MD_TICKER
from tests.websocket.conformance import assert_conforms
from tests.websocket.conftest import Pipeline
from tests.websocket.gateway import engine_books

pytestmark = [pytest.mark.integration]


def ticker_record(market: str, book_seq: int, last_trade_id: int, price: int) -> dict[str, Any]:
    """An ``xchg.v1.Ticker`` value with recognisable numbers (nothing the engine would compute)."""
    return {"market": market, "best_bid": price - 7, "bid_qty": 1300, "best_ask": price + 9, "ask_qty": 1700,
            "book_seq": book_seq, "last_price": price, "last_qty": 200, "last_trade_id": last_trade_id,
            "window_start": 1_767_225_600_000, "open_24h": price - 100, "high_24h": price + 50,
            "low_24h": price - 150, "change_24h": 100, "volume_24h": 987_654,
            "quote_volume_24h": Decimal(123_456_789), "trade_count_24h": 77, "ts": 1_767_225_660_000}


def produce_tickers(pipeline: Pipeline, records: list[dict[str, Any]]) -> None:
    producer = make_producer(pipeline.bootstrap)
    codec = Codec()
    for record in records:
        producer.produce(pipeline.ns(MD_TICKER), codec.encode(MD_TICKER, record), record["market"].encode())
    assert producer.flush(30) == 0


def test_an_older_record_never_replaces_a_newer_one() -> None:
    window = TradeWindow()
    assert window.publish(ticker_record("BTC-USD", 50, 9, 1000))
    assert not window.publish(ticker_record("BTC-USD", 40, 9, 999))  # read twice / restart overlap
    assert not window.publish(ticker_record("BTC-USD", 50, 9, 1000))  # nothing changed
    assert window.published == ticker_message(ticker_record("BTC-USD", 50, 9, 1000))


def test_the_gateway_serves_md_ticker_records(pipeline: Pipeline) -> None:
    pipeline.produce(800)
    pipeline.wait_processed()
    produce_tickers(pipeline, [ticker_record("BTC-USD", 10, 3, 5_000_000), ticker_record("BTC-USD", 20, 4, 5_000_100)])
    gateway = pipeline.gateway().start()
    gateway.wait_ready()
    first = ticker_message(ticker_record("BTC-USD", 20, 4, 5_000_100))
    assert first["type"] == "ticker" and first["bid"] == 5_000_093 and first["last_trade_id"] == 4

    # GET /v1/ticker: the md.ticker record for BTC-USD, the gateway's own ticker for ETH-USD.
    status, body = gateway.get("/v1/ticker?market=BTC-USD")
    assert status == 200 and body["tickers"] == [first]
    expected = engine_books(pipeline.bootstrap, pipeline.ns)
    status, body = gateway.get("/v1/ticker?market=ETH-USD")
    assert status == 200 and body["tickers"][0]["book_seq"] == expected["ETH-USD"].book_seq
    assert body["tickers"][0]["bid"] == (expected["ETH-USD"].bids[0][0] if expected["ETH-USD"].bids else None)

    later = ticker_record("BTC-USD", 30, 5, 5_000_200)
    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        async with connect(gateway.url) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "channel": "ticker", "market": "BTC-USD"}))
            async with asyncio.timeout(30):
                while True:
                    message = orjson.loads(await ws.recv())
                    seen.append(message)
                    if message["type"] == "ticker":
                        break
                assert message == first  # the initial ticker
                await asyncio.to_thread(produce_tickers, pipeline, [later])
                while True:
                    message = orjson.loads(await ws.recv())
                    seen.append(message)
                    if message["type"] == "ticker":
                        break
                assert message == ticker_message(later)  # the live update

    asyncio.run(follow())
    assert_conforms(seen)
