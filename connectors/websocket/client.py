"""The market-data client library (async): a local book that stays correct across connection loss.

``MarketDataClient(url).subscribe(market, channels)`` is an async iterator of typed updates
(:class:`BookUpdate`, :class:`Trade`, :class:`Candle`, :class:`Ticker`, :class:`Status`,
:class:`ConnectionState`, :class:`Resync`, :class:`ServerError`) for one market, speaking the
protocol of ``docs/websocket-protocol.md``. The decisions are pure, in ``clientcore``; this module
moves bytes. Invariants:

- A :class:`BookUpdate` with ``stale=False`` is the gateway's book at its ``book_seq``: the
  client's book was built from a snapshot and every update since chained (``prev_book_seq``) and
  matched its checksum. On a gap, a checksum mismatch or a heartbeat ahead of the book, the
  client emits :class:`Resync`, unsubscribes and subscribes the book again, and ignores every
  book message until the new subscription's snapshot (the Binance procedure, with the snapshot
  coming on the same ordered connection, so no buffering is needed).
- A lost connection (closed, or silent: no message for ``heartbeat_timeout_s`` while the server
  sends a heartbeat every second of idleness) is reconnected with capped, fully jittered
  exponential backoff; after ``poll_after_s`` down, the client polls the REST endpoints every
  ``poll_interval_s`` and emits their books with ``stale=True`` (and :class:`ConnectionState`
  ``POLLING``) until the WebSocket is back and its snapshot applied.
- Trades are delivered once each, in increasing ``trade_id`` (gap-free per market): duplicates
  (REST and WebSocket overlap, replays) are dropped and a gap before a live trade is filled from
  ``GET /v1/trades`` when the gateway still has those trades.
- Backpressure is the caller's pace: the client reads the socket only when the caller asks for
  the next update (a caller that stops reading is disconnected by the gateway, 4008, and the
  client then reconnects and resynchronises like after any loss).

``tamper`` is a fault-injection hook for tests: it sees every decoded server message first and
returns it (possibly changed) or None to drop it. :meth:`MarketDataClient.abort_connection`
drops the connection as a network failure would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from connectors.websocket.clientcore import (
    Level,
    LocalBook,
    TradeOutcome,
    TradeSequence,
    Verdict,
    backoff_delay,
    heartbeat_shows_loss,
)

CHANNELS = ("book", "trades", "ticker", "status", "candles")
DEFAULT_CHANNELS = ("book", "trades", "ticker")
BACKFILL_RETRY_S = 0.1
Message = dict[str, Any]
Tamper = Callable[[Message], Message | None]


class Link(Enum):
    CONNECTING = "connecting"  # before the first connection
    LIVE = "live"  # streaming: the book is the gateway's, updated as it moves
    RECONNECTING = "reconnecting"  # the socket is down; nothing newer than the last update
    POLLING = "polling"  # the socket is down; books from REST, marked stale


@dataclass(frozen=True, slots=True)
class ConnectionState:
    link: Link
    reason: str
    attempt: int  # reconnect attempts since the connection was last live


@dataclass(frozen=True, slots=True)
class BookUpdate:
    """The client's whole local book after a message, best levels first. ``stale``: from REST
    polling while the socket is down; ``snapshot``: the book was replaced, not updated."""

    market: str
    book_seq: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    checksum: int
    ts: int  # ms; 0 when the gateway has no time for it yet
    snapshot: bool
    stale: bool

    @property
    def best_bid(self) -> Level | None:
        return self.bids[0] if self.bids else None

    @property
    def best_ask(self) -> Level | None:
        return self.asks[0] if self.asks else None


@dataclass(frozen=True, slots=True)
class Trade:
    market: str
    trade_id: int
    price: int
    qty: int
    side: str  # the taker's side
    seq: int
    ts: int  # ms; 0 when the gateway has no time for it yet
    source: str  # "ws" or "rest" (a backfill or a poll)


@dataclass(frozen=True, slots=True)
class Candle:
    market: str
    interval: str
    window_start: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    quote_volume: int
    trade_count: int
    first_trade_id: int
    last_trade_id: int
    final: bool


@dataclass(frozen=True, slots=True)
class Ticker:
    market: str
    bid: int | None
    bid_qty: int | None
    ask: int | None
    ask_qty: int | None
    last: int | None
    last_trade_id: int | None
    volume_24h: int
    open_24h: int | None
    change_24h: int | None
    book_seq: int
    ts: int  # ms; 0 when the gateway has no time for it yet


@dataclass(frozen=True, slots=True)
class Status:
    market: str
    state: str
    seq: int | None
    ts: int | None


@dataclass(frozen=True, slots=True)
class Resync:
    """The local book was dropped and a snapshot requested; ``reason``: gap, checksum_mismatch,
    no_snapshot, malformed or heartbeat."""

    market: str
    reason: str
    book_seq: int | None  # the book's book_seq before it was dropped


@dataclass(frozen=True, slots=True)
class ServerError:
    code: str
    message: str
    request_id: int | None


Update = BookUpdate | Trade | Candle | Ticker | Status | ConnectionState | Resync | ServerError


@dataclass(frozen=True)
class ClientOptions:
    depth: int | None = None  # book depth (10, 25, 100, 500, 1000); None: the whole book
    candle_interval: str = "1m"
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 5.0
    heartbeat_timeout_s: float = 3.0  # silence longer than this: the connection is dead
    open_timeout_s: float = 3.0
    ping_interval_s: float | None = 10.0
    ping_timeout_s: float | None = 10.0
    poll_after_s: float = 1.0  # down this long: start polling REST
    poll_interval_s: float = 0.5
    rest_timeout_s: float = 2.0
    not_ready_retries: int = 2  # then reconnect (another worker may be in sync)
    resyncs_per_connection: int = 5  # then reconnect
    backfill_attempts: int = 3


class _Reconnect(Exception):
    """The connection is unusable (silent, never ready, resyncing in a loop): drop it."""


def endpoints(base_url: str) -> tuple[str, str]:
    """(http base, WebSocket URL) from ``http[s]://host:port`` or ``ws[s]://host:port[/v1/ws]``."""
    parts = urlsplit(base_url)
    secure = parts.scheme in ("https", "wss")
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ValueError(f"not an http(s) or ws(s) URL: {base_url!r}")
    http = urlunsplit(("https" if secure else "http", parts.netloc, "", "", ""))
    ws = urlunsplit(("wss" if secure else "ws", parts.netloc, "/v1/ws", "", ""))
    return http, ws


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def _int(value: Any) -> int:
    if type(value) is not int:
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def trade_from(message: Message, source: str) -> Trade:
    return Trade(str(message["market"]), _int(message["trade_id"]), _int(message["price"]), _int(message["qty"]),
                 str(message["side"]), _int(message["seq"]), _int(message["ts"]), source)


def ticker_from(message: Message) -> Ticker:
    return Ticker(str(message["market"]), _int_or_none(message.get("bid")), _int_or_none(message.get("bid_qty")),
                  _int_or_none(message.get("ask")), _int_or_none(message.get("ask_qty")),
                  _int_or_none(message.get("last")), _int_or_none(message.get("last_trade_id")),
                  _int_or_none(message.get("volume_24h")) or 0, _int_or_none(message.get("open_24h")),
                  _int_or_none(message.get("change_24h")), _int_or_none(message.get("book_seq")) or 0,
                  _int_or_none(message.get("ts")) or 0)


def candle_from(message: Message) -> Candle:
    return Candle(str(message["market"]), str(message["interval"]), _int(message["window_start"]),
                  _int(message["open"]), _int(message["high"]), _int(message["low"]), _int(message["close"]),
                  _int(message["volume"]), int(str(message["quote_volume"])), _int(message["trade_count"]),
                  _int(message["first_trade_id"]), _int(message["last_trade_id"]), bool(message["final"]))


def status_from(message: Message) -> Status:
    return Status(str(message["market"]), str(message["state"]), _int_or_none(message.get("seq")),
                  _int_or_none(message.get("ts")))


def _request_id(message: Message) -> int:
    """The echoed request id of an answer (-1 when absent: matches no request)."""
    value = message.get("id")
    return value if type(value) is int else -1


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:160]


class MarketDataClient:
    """A client of one gateway URL; each :meth:`subscribe` call is its own connection."""

    def __init__(self, url: str, options: ClientOptions | None = None, *, tamper: Tamper | None = None,
                 uniform: Callable[[], float] | None = None) -> None:
        self.http_url, self.ws_url = endpoints(url)
        self.options = options or ClientOptions()
        self.tamper = tamper
        self.uniform = uniform or random.random
        self._connections: set[ClientConnection] = set()

    def abort_connection(self) -> int:
        """Drop every open connection of this client abruptly (no close handshake), as a network
        failure would; returns how many were open."""
        open_now = list(self._connections)
        for ws in open_now:
            ws.transport.abort()
        return len(open_now)

    async def get_json(self, path: str) -> Any | None:
        """``GET`` a REST path of the gateway; None on any failure (refused, timeout, non-200)."""
        url = self.http_url + path
        timeout = self.options.rest_timeout_s

        def fetch() -> Any | None:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as answer:
                    return orjson.loads(answer.read()) if answer.status == 200 else None
            except (OSError, ValueError, urllib.error.URLError):
                return None

        return await asyncio.to_thread(fetch)

    async def subscribe(self, market: str, channels: Sequence[str] = DEFAULT_CHANNELS) -> AsyncIterator[Update]:
        """Updates of ``market`` for ``channels`` (of book, trades, ticker, status, candles), for
        ever: close the iterator (``aclose``, or leave an ``async for``) to stop."""
        unknown = sorted(set(channels) - set(CHANNELS))
        if unknown or not channels:
            raise ValueError(f"channels must be a non-empty subset of {CHANNELS}, got {list(channels)}")
        session = _Session(self, market, tuple(dict.fromkeys(channels)))
        async for update in session.run():
            yield update


class _Session:
    """One ``subscribe`` call: its book, trade sequence, connection attempts and polling."""

    def __init__(self, client: MarketDataClient, market: str, channels: tuple[str, ...]) -> None:
        self.client = client
        self.options = client.options
        self.market = market
        self.channels = channels
        self.book = LocalBook(market, self.options.depth)
        self.trades = TradeSequence()
        self.next_id = 0
        self.link = Link.CONNECTING
        self.down_since: float | None = None
        self.next_poll_at = 0.0
        self.reached_live = False

    # -- the connection loop ----------------------------------------------------------------------

    async def run(self) -> AsyncIterator[Update]:
        yield self.state(Link.CONNECTING, "starting", 0)
        attempt = 0
        while True:
            self.reached_live = False
            reason = "connection lost"
            try:
                ws = await connect(self.client.ws_url, open_timeout=self.options.open_timeout_s,
                                   ping_interval=self.options.ping_interval_s,
                                   ping_timeout=self.options.ping_timeout_s, max_size=1 << 24, compression=None)
            except (OSError, TimeoutError, InvalidHandshake) as error:
                reason = f"connect failed: {_describe(error)}"
            else:
                self.client._connections.add(ws)
                try:
                    async for update in self.stream(ws):
                        yield update
                except ConnectionClosed as error:
                    reason = f"closed: {error.rcvd.code} {error.rcvd.reason}" if error.rcvd else "connection lost"
                except (_Reconnect, OSError) as error:
                    reason = _describe(error)
                finally:
                    self.client._connections.discard(ws)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ws.close(), 1.0)
                    ws.transport.abort()
            if self.reached_live:
                attempt = 0
            if self.down_since is None:
                self.down_since = time.monotonic()
            self.book.invalidate()
            if self.link in (Link.CONNECTING, Link.LIVE):  # a change of state, not every attempt
                yield self.state(Link.RECONNECTING, reason, attempt)
            async for update in self.wait_down(attempt):
                yield update
            attempt += 1

    def state(self, link: Link, reason: str, attempt: int) -> ConnectionState:
        self.link = link
        return ConnectionState(link, reason, attempt)

    async def wait_down(self, attempt: int) -> AsyncIterator[Update]:
        """The backoff delay before the next attempt, polling REST meanwhile once down long enough."""
        options = self.options
        until = time.monotonic() + backoff_delay(attempt, options.backoff_base_s, options.backoff_cap_s,
                                                 self.client.uniform)
        assert self.down_since is not None
        while True:
            poll_at = max(self.next_poll_at, self.down_since + options.poll_after_s)
            if time.monotonic() >= poll_at:
                async for update in self.poll():
                    yield update
                self.next_poll_at = time.monotonic() + options.poll_interval_s
                poll_at = self.next_poll_at
            now = time.monotonic()
            if now >= until:
                return
            await asyncio.sleep(min(until, poll_at) - now)

    # -- REST polling -------------------------------------------------------------------------------

    async def poll(self) -> AsyncIterator[Update]:
        market = quote(self.market, safe="")
        ticker_body = await self.client.get_json(f"/v1/ticker?market={market}") \
            if "ticker" in self.channels or "trades" in self.channels else None
        ticker = None
        if isinstance(ticker_body, dict) and ticker_body.get("tickers"):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                ticker = ticker_from(ticker_body["tickers"][0])
        if "book" in self.channels:
            depth = f"?depth={self.options.depth}" if self.options.depth else ""
            body = await self.client.get_json(f"/v1/book/{market}{depth}")
            if isinstance(body, dict) and self.book.load_snapshot(body) is Verdict.APPLIED:
                if self.link is not Link.POLLING:
                    yield self.state(Link.POLLING, "the WebSocket is down: books from REST", 0)
                yield self.book_update(snapshot=True, stale=True)
        if "trades" in self.channels:
            if self.trades.last is None and ticker is not None and ticker.last_trade_id is not None:
                self.trades.last = ticker.last_trade_id  # no history: deliver the trades from now on
            if self.trades.last is not None:
                async for trade in self.fetch_trades(None):
                    yield trade
        if ticker is not None and "ticker" in self.channels:
            yield ticker

    async def fetch_trades(self, before: int | None) -> AsyncIterator[Trade]:
        """The trades after the last delivered one from REST (those below ``before`` only)."""
        body = await self.client.get_json(f"/v1/trades/{quote(self.market, safe='')}"
                                          f"?since_trade_id={self.trades.last}")
        if not isinstance(body, dict) or not isinstance(body.get("trades"), list):
            return
        for message in body["trades"]:
            try:
                trade = trade_from(message, "rest")
            except (KeyError, TypeError, ValueError):
                continue
            if before is not None and trade.trade_id >= before:
                break
            if self.trades.check(trade.trade_id) is TradeOutcome.NEW and self.trades.deliver(trade.trade_id):
                yield trade

    # -- streaming ------------------------------------------------------------------------------

    def request(self, op: str, channel: str) -> tuple[int, bytes]:
        self.next_id += 1
        body: Message = {"op": op, "id": self.next_id, "channel": channel, "market": self.market}
        if channel == "book" and op == "subscribe" and self.options.depth is not None:
            body["depth"] = self.options.depth
        if channel == "candles":
            body["interval"] = self.options.candle_interval
        return self.next_id, orjson.dumps(body)

    def book_update(self, snapshot: bool, stale: bool) -> BookUpdate:
        book = self.book
        assert book.book_seq is not None
        return BookUpdate(self.market, book.book_seq, tuple(book.best_bids()), tuple(book.best_asks()),
                          book.checksum(), book.ts, snapshot, stale)

    async def stream(self, ws: ClientConnection) -> AsyncIterator[Update]:
        options = self.options
        pending: dict[int, str] = {}  # subscribe request id → channel, until subscribed
        book_request: int | None = None  # the book subscription whose snapshot is awaited
        book_confirmed = False  # its "subscribed" came: the next book message is its snapshot
        not_ready = resyncs = 0
        self.book.invalidate()  # a REST book of the polling: only this connection's snapshot replaces it
        for channel in self.channels:
            request_id, frame = self.request("subscribe", channel)
            pending[request_id] = channel
            if channel == "book":
                book_request = request_id
            await ws.send(frame)

        async def resync(reason: str) -> Resync:
            nonlocal book_request, book_confirmed, resyncs
            resyncs += 1
            if resyncs > options.resyncs_per_connection:
                raise _Reconnect(f"{resyncs} resyncs on one connection")
            before = self.book.book_seq
            self.book.invalidate()
            await ws.send(self.request("unsubscribe", "book")[1])
            book_request, frame = self.request("subscribe", "book")
            pending[book_request] = "book"
            book_confirmed = False
            await ws.send(frame)
            return Resync(self.market, reason, before)

        heard_at = time.monotonic()  # the last message that reached the protocol (after tamper)
        while True:
            try:
                silence_left = heard_at + options.heartbeat_timeout_s - time.monotonic()
                raw = await asyncio.wait_for(ws.recv(), max(0.0, silence_left))
            except TimeoutError:
                raise _Reconnect(f"silent connection: nothing for {options.heartbeat_timeout_s:g}s") from None
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise _Reconnect("the server sent a frame that is not JSON") from None
            if self.client.tamper is not None:
                message = self.client.tamper(message)
                if message is None:
                    continue
            heard_at = time.monotonic()
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "book":
                if not book_confirmed or message.get("market") != self.market:
                    continue  # of a subscription being replaced
                verdict = self.book.apply(message)
                if verdict is Verdict.APPLIED:
                    if not self.reached_live:
                        yield self.live()
                    yield self.book_update(bool(message.get("snapshot")), stale=False)
                else:
                    yield await resync(verdict.value)
            elif kind == "trade":
                try:
                    trade = trade_from(message, "ws")
                except (KeyError, TypeError, ValueError):
                    continue
                outcome = self.trades.check(trade.trade_id)
                if outcome is TradeOutcome.DUPLICATE:
                    continue
                if outcome is TradeOutcome.AFTER_GAP:
                    for attempt in range(options.backfill_attempts):
                        if attempt:
                            await asyncio.sleep(BACKFILL_RETRY_S)  # the REST worker may lag this one
                        async for missing in self.fetch_trades(trade.trade_id):
                            yield missing
                        if self.trades.check(trade.trade_id) is TradeOutcome.NEW:
                            break
                if self.trades.deliver(trade.trade_id):
                    yield trade
            elif kind == "heartbeat":
                if book_confirmed and heartbeat_shows_loss(self.book, message):
                    yield await resync("heartbeat")
            elif kind == "subscribed":
                answered = pending.pop(_request_id(message), None)
                if answered is None:
                    continue
                not_ready = 0
                if answered == "book":
                    book_confirmed = True
                elif answered == "trades" and self.trades.last is not None:
                    async for missing in self.fetch_trades(None):  # what was missed while down
                        yield missing
                if not pending and not self.reached_live and "book" not in self.channels:
                    yield self.live()
            elif kind == "not_ready":
                answered = pending.pop(_request_id(message), None)
                if answered is None:
                    continue
                not_ready += 1
                if not_ready > options.not_ready_retries:
                    raise _Reconnect(f"{self.market} {answered} not ready after {not_ready - 1} retries")
                retry_ms = message.get("retry_after_ms")
                await asyncio.sleep(min(2.0, max(0.05, (retry_ms if type(retry_ms) is int else 500) / 1000)))
                request_id, frame = self.request("subscribe", answered)
                pending[request_id] = answered
                if answered == "book":
                    book_request = request_id
                await ws.send(frame)
            elif kind == "ticker":
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    yield ticker_from(message)
            elif kind == "candle":
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    yield candle_from(message)
            elif kind == "status":
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    yield status_from(message)
            elif kind == "error":
                error_id = message.get("id")
                error_id = error_id if type(error_id) is int else None
                if error_id is not None:
                    pending.pop(error_id, None)
                yield ServerError(str(message.get("code")), str(message.get("message")), error_id)

    def live(self) -> ConnectionState:
        self.reached_live = True
        self.down_since = None
        self.next_poll_at = 0.0
        return self.state(Link.LIVE, "streaming", 0)


async def subscribe(url: str, market: str, channels: Sequence[str] = DEFAULT_CHANNELS,
                    options: ClientOptions | None = None) -> AsyncIterator[Update]:
    """Shorthand for ``MarketDataClient(url, options).subscribe(market, channels)``."""
    async for update in MarketDataClient(url, options).subscribe(market, channels):
        yield update
