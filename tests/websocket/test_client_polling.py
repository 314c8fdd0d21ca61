"""Polling fallback: with the WebSocket route refused for a client (a proxy in front of a real
gateway answers the upgrade 503 and cuts the open tunnel; REST passes), the client keeps
serving the engine's book from REST, marked stale, follows it while the flow goes on, then
switches back to a live stream when the route is admitted again."""

from __future__ import annotations

import asyncio

import pytest

from connectors.websocket.client import BookUpdate, ClientOptions, ConnectionState, Link
from tests.websocket.client_harness import Follower, UpgradeRefusingProxy, until
from tests.websocket.conftest import Pipeline
from tests.websocket.gateway import engine_books

pytestmark = [pytest.mark.integration]
MARKET = "BTC-USD"


def test_client_degrades_to_rest_polling_and_back(pipeline: Pipeline) -> None:
    pipeline.produce(1500)
    pipeline.wait_processed()
    gateway = pipeline.gateway().start()
    gateway.wait_ready()

    async def scenario() -> None:
        proxy = await UpgradeRefusingProxy(gateway.port).start()
        follower = Follower(proxy.url, MARKET, ClientOptions(poll_after_s=0.5, poll_interval_s=0.25,
                                                             backoff_cap_s=1.0)).start()
        try:
            await until(lambda: follower.live, 30, "the client to stream")
            books = await asyncio.to_thread(engine_books, pipeline.bootstrap, pipeline.ns)
            assert follower.book_equals(books[MARKET])

            proxy.refuse()
            await until(lambda: follower.link is Link.POLLING and follower.book is not None and follower.book.stale,
                        15, "the client to serve stale books from REST")
            assert proxy.refused > 0, "the client did try to reconnect"
            await asyncio.to_thread(pipeline.produce, 1000, 800.0)
            await asyncio.to_thread(pipeline.wait_processed)
            books = await asyncio.to_thread(engine_books, pipeline.bootstrap, pipeline.ns)
            want = books[MARKET]
            await until(lambda: follower.book is not None and follower.book.book_seq >= want.book_seq, 30,
                        "the polled book to reach the engine's book_seq")
            assert follower.book is not None and follower.book.stale and follower.link is Link.POLLING
            assert follower.book_equals(want), "the polled book differs from the engine's"
            assert follower.ticker is not None
            assert follower.trades and follower.trades == sorted(set(follower.trades)), "trades kept flowing, once each"
            stale_updates = [u for _, u in follower.updates if isinstance(u, BookUpdate) and u.stale]
            assert len(stale_updates) >= 2, "the client kept delivering books while polling"

            proxy.admit()
            await until(lambda: follower.live, 30, "the client to stream again")
            await asyncio.to_thread(pipeline.produce, 500, 800.0)
            await asyncio.to_thread(pipeline.wait_processed)
            books = await asyncio.to_thread(engine_books, pipeline.bootstrap, pipeline.ns)
            want = books[MARKET]
            await until(lambda: follower.book is not None and follower.book.book_seq >= want.book_seq, 30,
                        "the live book to reach the engine's book_seq")
            assert not follower.book.stale and follower.book_equals(want)  # type: ignore[union-attr]
            links = [u.link for _, u in follower.updates if isinstance(u, ConnectionState)]
            assert links == [Link.CONNECTING, Link.LIVE, Link.RECONNECTING, Link.POLLING, Link.LIVE], links
            ids = follower.trades
            assert ids == list(range(ids[0], ids[0] + len(ids))), "trade ids contiguous across the fallback"
            assert follower.error is None
        finally:
            await follower.stop()
            await proxy.close()

    asyncio.run(scenario())
