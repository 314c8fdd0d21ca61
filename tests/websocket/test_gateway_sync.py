"""The gateway against a real engine: its book after start equals the engine's at the same
book_seq; an engine restart's snapshot reaches subscribers; REST answers."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from tests.pipeline import wait_for
from tests.websocket.conftest import Pipeline
from tests.websocket.gateway import BookReplica, engine_books

pytestmark = [pytest.mark.integration]
MARKETS = ("BTC-USD", "ETH-USD")


async def recv_until(ws: Any, predicate: Any, timeout: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = orjson.loads(await ws.recv())
            if predicate(message):
                return message  # type: ignore[no-any-return]


def test_book_after_start_equals_engine_and_rest(pipeline: Pipeline) -> None:
    pipeline.produce(3000)
    pipeline.wait_processed()
    gateway = pipeline.gateway().start()
    gateway.wait_ready()
    expected = engine_books(pipeline.bootstrap, pipeline.ns)

    async def check() -> None:
        async with connect(gateway.url) as ws:
            for i, market in enumerate(MARKETS):
                await ws.send(orjson.dumps({"op": "subscribe", "id": i, "channel": "book", "market": market}))
                await recv_until(ws, lambda m: m["type"] == "subscribed", 10)
                snapshot = await recv_until(ws, lambda m: m["type"] == "book", 10)
                replica = BookReplica(market)
                replica.apply(snapshot)
                want = expected[market]
                assert replica.book_seq == want.book_seq
                assert replica.best_bids() == want.bids and replica.best_asks() == want.asks

    asyncio.run(check())
    # REST: the same book, with book_seq and checksum; markets, ticker, trades.
    status, book = gateway.get("/v1/book/BTC-USD?depth=5")
    assert status == 200 and book["book_seq"] == expected["BTC-USD"].book_seq
    assert [tuple(level) for level in book["bids"]] == expected["BTC-USD"].bids[:5]
    status, markets = gateway.get("/v1/markets")
    assert status == 200 and {m["market"] for m in markets["markets"]} >= set(MARKETS)
    assert all(m["ready"] for m in markets["markets"])
    status, trades = gateway.get("/v1/trades/BTC-USD?since_trade_id=0&limit=50")
    assert status == 200 and trades["trades"], "the flow traded"
    ids = [t["trade_id"] for t in trades["trades"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    status, later = gateway.get(f"/v1/trades/BTC-USD?since_trade_id={ids[-1]}")
    assert status == 200 and all(t["trade_id"] > ids[-1] for t in later["trades"])
    status, ticker = gateway.get("/v1/ticker?market=BTC-USD")
    assert status == 200 and ticker["tickers"][0]["bid"] == expected["BTC-USD"].bids[0][0]
    assert gateway.get("/v1/book/NOPE-USD")[0] == 404
    assert gateway.get("/v1/book/BTC-USD?depth=x") == (400, {"code": "invalid_parameter",
                                                           "message": "depth must be an integer"})
    assert gateway.get("/v1/candles/BTC-USD?interval=2m")[0] == 400
    assert gateway.get("/v1/candles/BTC-USD?interval=1m")[0] == 200
    assert gateway.get("/nope")[0] == 404


def test_engine_restart_snapshot_reaches_subscribers(pipeline: Pipeline) -> None:
    pipeline.produce(1500)
    pipeline.wait_processed()
    gateway = pipeline.gateway().start()
    gateway.wait_ready()
    replicas = {m: BookReplica(m) for m in MARKETS}
    trade_ids: dict[str, list[int]] = {m: [] for m in MARKETS}

    async def follow(stop_at: dict[str, int]) -> None:
        async with connect(gateway.url) as ws:
            for market in MARKETS:
                await ws.send(orjson.dumps({"op": "subscribe", "channel": "book", "market": market}))
                await ws.send(orjson.dumps({"op": "subscribe", "channel": "trades", "market": market}))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                if message["type"] == "book":
                    replicas[message["market"]].apply(message)
                elif message["type"] == "trade":
                    trade_ids[message["market"]].append(message["trade_id"])
                if stop_at and all(replicas[m].book_seq >= stop_at[m] for m in MARKETS):
                    return
            raise AssertionError("books did not reach the engine's book_seq in time")

    async def scenario() -> None:
        async def restart_and_feed() -> None:
            # Wait for the initial snapshots, then restart the engine and feed more commands.
            await asyncio.to_thread(wait_for, lambda: all(r.snapshots for r in replicas.values()), 30,
                                    "initial snapshots")
            pipeline.engine.signal(signal.SIGTERM)
            await asyncio.to_thread(pipeline.engine.proc.wait, 60)  # type: ignore[union-attr]
            pipeline.engine.start()
            await asyncio.to_thread(pipeline.produce, 1500)
            await asyncio.to_thread(pipeline.wait_processed)

        feeder = asyncio.create_task(restart_and_feed())
        target: dict[str, int] = {}
        follower = asyncio.create_task(follow(target))
        await feeder
        expected = await asyncio.to_thread(engine_books, pipeline.bootstrap, pipeline.ns)
        target.update({m: expected[m].book_seq for m in MARKETS})
        await follower
        for market in MARKETS:
            replica, want = replicas[market], expected[market]
            assert replica.book_seq == want.book_seq
            assert replica.best_bids() == want.bids and replica.best_asks() == want.asks
            assert replica.snapshots >= 2, f"{market}: the engine restart's snapshot was not sent"
            ids = trade_ids[market]
            assert ids == sorted(set(ids)), f"{market}: trades duplicated or out of order"

    asyncio.run(scenario())
