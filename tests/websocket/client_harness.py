"""Helpers of the client-library tests: a follower that runs ``MarketDataClient.subscribe`` and
records what it delivers, a TCP proxy that can refuse WebSocket upgrades, and async waits on
conditions with deadlines (never a sleep as synchronisation).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.websocket.client import (
    BookUpdate,
    ClientOptions,
    ConnectionState,
    Link,
    MarketDataClient,
    Resync,
    Ticker,
    Trade,
    Update,
)
from tests.websocket.gateway import EngineBook


async def until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` on the loop until it is truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass(eq=False)
class Follower:
    """One client following one market; every update is recorded with its arrival time."""

    url: str
    market: str
    options: ClientOptions = field(default_factory=ClientOptions)
    channels: tuple[str, ...] = ("book", "trades", "ticker")
    updates: list[tuple[float, Update]] = field(default_factory=list)
    trades: list[int] = field(default_factory=list)
    book: BookUpdate | None = None  # the latest book delivered (live or stale)
    ticker: Ticker | None = None
    link: Link = Link.CONNECTING
    corrupt_next_delta: bool = False
    corrupted_at: float | None = None
    silent: bool = False  # drop every server message (a silent connection) until the next reconnect
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.client = MarketDataClient(self.url, self.options, tamper=self.tamper)

    def tamper(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if self.silent:
            return None
        if (self.corrupt_next_delta and message.get("type") == "book" and not message.get("snapshot")
                and message.get("bids") and self._checked(message["bids"][0][0])):
            self.corrupt_next_delta = False
            self.corrupted_at = time.monotonic()
            price, qty = message["bids"][0]
            return {**message, "bids": [[price, qty + 1], *message["bids"][1:]]}
        return message

    def _checked(self, bid_price: int) -> bool:
        """Whether a bid level at this price is inside the checksum (the top 10 bids once the
        delta is applied): corrupting a deeper level is, by the protocol, not detectable."""
        book = self.book
        if book is None:
            return False
        return len(book.bids) < 10 or bid_price >= book.bids[9][0]

    def start(self) -> Follower:
        self.task = asyncio.get_running_loop().create_task(self.run())
        return self

    async def run(self) -> None:
        try:
            async for update in self.client.subscribe(self.market, self.channels):
                self.updates.append((time.monotonic(), update))
                if isinstance(update, BookUpdate):
                    self.book = update
                elif isinstance(update, Trade):
                    self.trades.append(update.trade_id)
                elif isinstance(update, Ticker):
                    self.ticker = update
                elif isinstance(update, ConnectionState):
                    self.link = update.link
                    if update.link in (Link.RECONNECTING, Link.POLLING):
                        self.silent = False
        except Exception as error:  # reported by the test's assertions
            self.error = error
            raise

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    @property
    def live(self) -> bool:
        return self.link is Link.LIVE and self.book is not None and not self.book.stale

    def losses_since(self, since: float) -> list[float]:
        """Times the client reported a loss (a reconnect or a resync) after ``since``."""
        return [t for t, u in self.updates if t >= since and (
            isinstance(u, Resync) or (isinstance(u, ConnectionState) and u.link is Link.RECONNECTING))]

    def recovered_at(self, since: float) -> float | None:
        """When the first live snapshot after the first loss since ``since`` arrived."""
        losses = self.losses_since(since)
        if not losses:
            return None
        for t, u in self.updates:
            if t >= losses[0] and isinstance(u, BookUpdate) and u.snapshot and not u.stale:
                return t
        return None

    def book_equals(self, want: EngineBook) -> bool:
        book = self.book
        return (book is not None and book.book_seq == want.book_seq and list(book.bids) == want.bids
                and list(book.asks) == want.asks)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


class UpgradeRefusingProxy:
    """A loopback TCP proxy in front of a gateway. While ``refusing``, a WebSocket upgrade (a
    request for ``/v1/ws``) is answered HTTP 503 and the open tunnels are cut; plain REST
    requests always pass. Everything else is piped byte for byte."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refusing = False
        self.refused = 0
        self.rest_requests = 0
        self.tunnels: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> UpgradeRefusingProxy:
        self.server = await asyncio.start_server(self.accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refuse(self) -> None:
        self.refusing = True
        for writer in list(self.tunnels):
            writer.transport.abort()

    def admit(self) -> None:
        self.refusing = False

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.tunnels):
            writer.transport.abort()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        upgrade = head.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"/v1/ws"]
        if upgrade and self.refusing:
            self.refused += 1
            body = b'{"code": "refused", "message": "the WebSocket route is refused by the test proxy"}'
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        if not upgrade:
            self.rest_requests += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        if upgrade:
            self.tunnels.add(writer)
            self.tunnels.add(up_writer)
        up_writer.write(head)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self.tunnels.discard(writer)
            self.tunnels.discard(up_writer)
