"""A fan-out client process: N WebSocket connections (``websockets`` directly), each subscribed to
the book and trades of one market, keeping a book by the protocol's rules.

Protocol with the test (stdin/stdout, JSON lines): prints ``{"ready": n}`` once every connection
has its snapshot; reads one line with the expected result per market
(``{market: {"book_seq", "bids", "asks", "trades"}}``); runs until every connection reached it
(or a deadline) and prints ``{"ok": n, "failures": [...]}``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import orjson
from websockets.asyncio.client import connect

from tests.websocket.gateway import BookReplica


class Follower:
    def __init__(self, market: str) -> None:
        self.replica = BookReplica(market)
        self.trades: list[int] = []
        self.error: str | None = None
        self.subscribed = asyncio.Event()

    async def run(self, url: str, expected: asyncio.Future[dict[str, Any]]) -> None:
        market = self.replica.market
        try:
            async with connect(url, open_timeout=60, ping_interval=None) as ws:
                await ws.send(orjson.dumps({"op": "subscribe", "channel": "trades", "market": market}))
                await ws.send(orjson.dumps({"op": "subscribe", "channel": "book", "market": market}))
                while True:
                    if expected.done():
                        want = expected.result()[market]
                        if self.replica.book_seq >= want["book_seq"] and len(self.trades) >= want["trades"]:
                            return
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 1.0)
                    except TimeoutError:
                        continue
                    message = orjson.loads(raw)
                    if message["type"] == "book":
                        self.replica.apply(message)
                        self.subscribed.set()
                    elif message["type"] == "trade":
                        self.trades.append(message["trade_id"])
                    elif message["type"] in ("error", "not_ready"):
                        raise AssertionError(f"answered {message}")
        except Exception as error:
            self.error = f"{market}: {type(error).__name__}: {error}"
            self.subscribed.set()

    def verdict(self, want: dict[str, Any]) -> str | None:
        if self.error:
            return self.error
        r = self.replica
        if r.book_seq != want["book_seq"]:
            return f"{r.market}: book_seq {r.book_seq} != {want['book_seq']}"
        if [list(x) for x in r.best_bids()] != want["bids"] or [list(x) for x in r.best_asks()] != want["asks"]:
            return f"{r.market}: book differs at {r.book_seq}"
        if self.trades != list(range(1, want["trades"] + 1)):
            return f"{r.market}: trade ids not exactly 1..{want['trades']} (got {len(self.trades)})"
        return None


async def main(url: str, markets: list[str], count: int) -> None:
    loop = asyncio.get_running_loop()
    expected: asyncio.Future[dict[str, Any]] = loop.create_future()
    followers = [Follower(markets[i % len(markets)]) for i in range(count)]
    tasks = []
    for i in range(0, count, 50):  # connect in waves so that the accept queue is not flooded
        batch = followers[i:i + 50]
        tasks.extend(asyncio.create_task(f.run(url, expected)) for f in batch)
        await asyncio.gather(*(f.subscribed.wait() for f in batch))
    print(orjson.dumps({"ready": sum(1 for f in followers if f.error is None)}).decode(), flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    expected.set_result(orjson.loads(line))
    deadline = time.monotonic() + 90
    await asyncio.wait(tasks, timeout=max(1.0, deadline - time.monotonic()))
    failures = [v for f in followers if (v := f.verdict(expected.result()[f.replica.market])) is not None]
    print(orjson.dumps({"ok": count - len(failures), "failures": failures[:5]}).decode(), flush=True)
    for task in tasks:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])))
