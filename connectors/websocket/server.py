"""The asyncio edge of one gateway worker: WebSocket connections, fan-out, REST, static files.

Everything that decides is in the pure modules (``marketstate``, ``protocol``, ``limits``,
``sendqueue``, ``rest``); this module moves bytes. Invariants:

- all state is touched on the event loop thread only; the Kafka reader thread hands records over
  with ``call_soon_threadsafe``;
- a connection's frames are queued in the order the loop produced them and written by that
  connection's own writer task, all pending frames in one socket write per tick
  (:class:`CoalescingConnection`); a connection whose queue overflows is closed 4008 and never
  slows the others (the fan-out only appends to queues);
- a subscription is registered only when its channel is ready; its initial message is queued
  before any later update of the same market.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import mimetypes
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from connectors.websocket import metrics, protocol, rest
from connectors.websocket.limits import ConnectionsPerAddress, RateVerdict, RequestRate, Subscriptions
from connectors.websocket.marketstate import MarketState
from connectors.websocket.protocol import Auth, Message, RequestError, Subscribe, SubscriptionKey, Unsubscribe
from connectors.websocket.reader import Batch, TopicReader
from connectors.websocket.sendqueue import Frame, SendQueue
from connectors.websocket.startup import StartPlan
from connectors.websocket.tokens import TokenError, verify_token
from streams.observability import get_logger
from streams.runtime.namespace import Namespace
from streams.serde.codec import Codec
from streams.serde.topics import MD_BOOK, MD_CANDLES, MD_TICKER, ORDERS_EVENTS, TRADES

log = get_logger("ws.server")
WS_PATH = "/v1/ws"
STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_ERRORS = 100
CLOSE_TOO_MANY_ERRORS = (4002, "too many errors")
CLOSE_SLOW_CONSUMER = (4008, "slow consumer")
CLOSE_FLOOD = (4029, "request flood")
SLOW_CLOSE_TIMEOUT_S = 5.0
NOT_READY_RETRY_MS = 500


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class CoalescingConnection(ServerConnection):
    """A ``ServerConnection`` that writes everything the protocol has to send in one
    ``transport.write`` (the library writes each frame separately): with all the frames of a
    tick framed before one ``send_context`` exit, a client costs one syscall per tick."""

    def send_data(self) -> None:
        pending: list[bytes] = []
        for data in self.protocol.data_to_send():
            if data:
                pending.append(data)
                continue
            if pending:
                self.transport.write(b"".join(pending))
                pending = []
            if self.transport.can_write_eof():
                with contextlib.suppress(Exception):
                    self.transport.write_eof()
            else:
                self.transport.close()
        if pending:
            self.transport.write(b"".join(pending) if len(pending) > 1 else pending[0])


@dataclass(frozen=True)
class GatewayConfig:
    host: str
    port: int
    worker: int
    token_secret: bytes
    token_max_ttl_ms: int
    send_queue_bytes: int
    socket_send_buffer: int
    max_connections_per_ip: int
    max_subscriptions: int
    subscribe_rate: int
    max_message_bytes: int
    ping_interval_s: float
    ping_timeout_s: float
    heartbeat_ms: int
    tick_ms: int


@dataclass(eq=False)
class Client:
    """One WebSocket connection and its per-connection state."""

    ws: ServerConnection
    address: str
    subscriptions: Subscriptions
    rate: RequestRate
    queue: SendQueue
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    last_queued: float = field(default_factory=time.monotonic)
    account: str | None = None
    expires: int = 0
    errors: int = 0
    closing: bool = False


class Gateway:
    def __init__(self, config: GatewayConfig, markets: dict[str, rest.MarketInfo], state: MarketState) -> None:
        self.config = config
        self.markets = markets
        self.market_names = frozenset(markets)
        self.state = state
        self.clients: set[Client] = set()
        self.per_address = ConnectionsPerAddress(config.max_connections_per_ip)
        # Public subscribers per key → their book depth (None for non-book or whole book).
        self.subscribers: dict[SubscriptionKey, dict[Client, int | None]] = {}
        self.private: dict[tuple[str, str], set[Client]] = {}  # (account, channel) → clients
        self.dirty: set[Client] = set()
        self.server: Server | None = None
        self.reader_failed: BaseException | None = None
        self.last_ticker: dict[str, Message] = {}  # per market: the ticker message published last

    # -- records from Kafka (loop thread) ---------------------------------------------------------

    def on_plan(self, plan: StartPlan) -> None:
        for market in plan.empty_markets:
            self.state.books[market].mark_empty_synced()
        for market, (state, seq, ts) in plan.states.items():
            if market in self.state.status:
                self.state.set_status(market, state, seq, ts)
        metrics.UNSYNCED_MARKETS.set(len(self.state.unsynced_markets()))

    def on_caught_up(self, topic: str) -> None:
        self.state.caught_up.add(topic)

    def on_records(self, batch: Batch) -> None:
        state = self.state
        for topic, record in batch:
            if topic == MD_BOOK:
                key = SubscriptionKey("book", record["market"])
                subs = self.subscribers.get(key, {})
                publication = state.on_book(record, set(subs.values()))
                if publication is not None and subs:
                    for client, depth in list(subs.items()):
                        self.enqueue(client, publication.frames[depth], "book")
            elif topic == TRADES:
                message = state.on_trade(record)
                if message is not None:
                    self.publish(SubscriptionKey("trades", message["market"]), message, "trades", message["ts"])
            elif topic == MD_CANDLES:
                message = state.on_candle(record)
                if message is not None:
                    self.publish(SubscriptionKey("candles", message["market"], message["interval"]), message,
                                 "candles")
            elif topic == MD_TICKER:  # the market's ticker from now on (ticker.current_ticker)
                window = state.trade_windows.get(record["market"])
                if window is not None and window.publish(record):
                    state.ticker_dirty.add(record["market"])
            elif topic == ORDERS_EVENTS:
                status_message, private = state.on_event(record)
                if status_message is not None:
                    self.publish(SubscriptionKey("status", status_message["market"]), status_message, "status")
                for account, channel, message in private:
                    targets = self.private.get((account, channel))
                    if targets:
                        data = protocol.encode(message)
                        for client in list(targets):
                            self.enqueue(client, data, channel)
        metrics.UNSYNCED_MARKETS.set(len(state.unsynced_markets()))

    def publish(self, key: SubscriptionKey, message: Message, channel: str, trade_ts: int | None = None) -> None:
        subs = self.subscribers.get(key)
        if not subs:
            return
        data = protocol.encode(message)
        for client in list(subs):
            self.enqueue(client, data, channel, trade_ts)

    # -- queues and writers -----------------------------------------------------------------------

    def enqueue(self, client: Client, data: bytes, channel: str, trade_ts: int | None = None) -> None:
        if client.closing:
            return
        if not client.queue.push(Frame(data, channel, trade_ts)):
            metrics.SLOW_CONSUMERS.inc()
            self.close_client(client, *CLOSE_SLOW_CONSUMER)
            return
        client.last_queued = time.monotonic()
        self.dirty.add(client)

    def send(self, client: Client, message: Message, channel: str = "control") -> None:
        self.enqueue(client, protocol.encode(message), channel)

    def close_client(self, client: Client, code: int, reason: str) -> None:
        """Close with ``code``: a slow consumer's queued frames are dropped, anybody else's (the
        errors that explain the close) are written first."""
        if client.closing:
            return
        client.closing = True
        self.forget(client)
        frames = client.queue.take()
        if code == CLOSE_SLOW_CONSUMER[0]:
            frames = []
        asyncio.get_running_loop().create_task(self._close(client.ws, code, reason, frames))

    async def _close(self, ws: ServerConnection, code: int, reason: str, frames: list[Frame]) -> None:
        try:
            async with asyncio.timeout(SLOW_CLOSE_TIMEOUT_S):
                if frames:
                    async with ws.send_context():
                        for frame in frames:
                            ws.protocol.send_text(frame.data)
                await ws.close(code, reason)
        except (TimeoutError, ConnectionClosed, OSError):
            ws.transport.abort()

    async def writer(self, client: Client) -> None:
        ws = client.ws
        while not client.closing:
            await client.wakeup.wait()
            client.wakeup.clear()
            frames = client.queue.take()
            if not frames:
                continue
            sent_at = now_ms()
            counts: dict[str, tuple[int, int]] = {}
            try:
                async with ws.send_context():
                    for frame in frames:
                        ws.protocol.send_text(frame.data)
            except ConnectionClosed:
                return
            metrics.WRITE_FRAMES.observe(len(frames))
            for frame in frames:
                n, size = counts.get(frame.channel, (0, 0))
                counts[frame.channel] = (n + 1, size + len(frame.data))
                if frame.trade_ts is not None:
                    metrics.TRADE_LATENCY.observe(max(0, sent_at - frame.trade_ts) / 1000)
            for channel, (n, size) in counts.items():
                metrics.MESSAGES_SENT.labels(channel).inc(n)
                metrics.BYTES_SENT.labels(channel).inc(size)

    async def ticker_loop(self) -> None:
        """Every tick: tickers that changed, heartbeats that are due, then wake the writers of
        every connection with pending frames (one coalesced write each)."""
        tick = self.config.tick_ms / 1000
        heartbeat_s = self.config.heartbeat_ms / 1000
        next_sweep = 0.0
        while True:
            await asyncio.sleep(tick)
            if self.reader_failed is not None:
                raise RuntimeError(f"kafka reader failed: {self.reader_failed}")
            for market in sorted(self.state.ticker_dirty):
                key = SubscriptionKey("ticker", market)
                if self.subscribers.get(key) and self.state.ready("ticker", market) is None:
                    message = self.state.ticker(market)
                    if message != self.last_ticker.get(market):  # an md.ticker ticker may not move with the book
                        self.last_ticker[market] = message
                        self.publish(key, message, "ticker")
                else:
                    self.last_ticker.pop(market, None)
            self.state.ticker_dirty.clear()
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + min(0.25, heartbeat_s / 4)
                self.sweep(now, heartbeat_s)
            dirty, self.dirty = self.dirty, set()
            for client in dirty:
                client.wakeup.set()

    def sweep(self, now: float, heartbeat_s: float) -> None:
        """Heartbeats on idle connections, expired tokens, the queue gauges."""
        wall = now_ms()
        queued = biggest = 0
        for client in list(self.clients):
            if client.closing:
                continue
            if client.account is not None and client.expires <= wall:
                for key in client.subscriptions.private_keys():
                    self.unregister(client, key)
                client.account = None
                self.send(client, protocol.error(None, "token_expired", "the token expired: private "
                                                 "subscriptions were dropped"))
            if now - client.last_queued >= heartbeat_s:
                seqs = {m: self.state.books[m].book_seq for m in client.subscriptions.public_markets()}
                self.send(client, protocol.heartbeat(wall, seqs), "heartbeat")
            queued += len(client.queue)
            biggest = max(biggest, client.queue.pending_bytes)
        metrics.SEND_QUEUE_FRAMES.set(queued)
        metrics.SEND_QUEUE_MAX_BYTES.set(biggest)

    # -- subscriptions ----------------------------------------------------------------------------

    def register(self, client: Client, key: SubscriptionKey, depth: int | None) -> None:
        if key.market is None:
            assert client.account is not None
            self.private.setdefault((client.account, key.channel), set()).add(client)
        else:
            self.subscribers.setdefault(key, {})[client] = depth

    def unregister(self, client: Client, key: SubscriptionKey) -> None:
        client.subscriptions.remove(key)
        if key.market is None:
            if client.account is not None:
                self.private.get((client.account, key.channel), set()).discard(client)
        else:
            subs = self.subscribers.get(key)
            if subs is not None:
                subs.pop(client, None)
                if not subs:
                    del self.subscribers[key]

    def forget(self, client: Client) -> None:
        for key in list(client.subscriptions.keys):
            self.unregister(client, key)

    def initial(self, client: Client, key: SubscriptionKey, depth: int | None) -> Iterable[tuple[Message, str]]:
        market = key.market
        if market is None:
            return []
        if key.channel == "book":
            return [(self.state.book_snapshot(market, depth), "book")]
        if key.channel == "ticker":
            return [(self.state.ticker(market), "ticker")]
        if key.channel == "status":
            return [(self.state.status_message(market), "status")]
        if key.channel == "candles":
            assert key.interval is not None
            latest = self.state.latest_candle(market, key.interval)
            return [(latest, "candles")] if latest is not None else []
        return []

    def on_frame(self, client: Client, frame: str | bytes) -> None:
        verdict = client.rate.check(time.monotonic())
        if verdict is RateVerdict.FLOOD:
            metrics.CLOSED_BY_POLICY.labels("flood").inc()
            self.close_client(client, *CLOSE_FLOOD)
            return
        request = protocol.parse_request(frame, self.market_names)
        if verdict is RateVerdict.LIMITED:
            rid = None if isinstance(request, RequestError) else request.id
            self.fail(client, RequestError(rid, "rate_limited", "too many requests in the last second"))
            return
        if isinstance(request, RequestError):
            self.fail(client, request)
        elif isinstance(request, Auth):
            self.authenticate(client, request)
        elif isinstance(request, Subscribe):
            self.subscribe(client, request)
        elif isinstance(request, Unsubscribe):
            if request.key not in client.subscriptions.keys:
                self.fail(client, RequestError(request.id, "not_subscribed", "no such subscription"))
                return
            self.unregister(client, request.key)
            self.send(client, protocol.subscribed("unsubscribed", request.id, request.key))

    def fail(self, client: Client, error: RequestError) -> None:
        metrics.ERRORS.labels(error.code).inc()
        client.errors += 1
        if client.errors > MAX_ERRORS:
            metrics.CLOSED_BY_POLICY.labels("errors").inc()
            self.close_client(client, *CLOSE_TOO_MANY_ERRORS)
            return
        self.send(client, protocol.error(error.id, error.code, error.message))

    def authenticate(self, client: Client, request: Auth) -> None:
        try:
            account, expires = verify_token(self.config.token_secret, request.token, now_ms(),
                                            self.config.token_max_ttl_ms)
        except TokenError as error:
            self.fail(client, RequestError(request.id, error.code, str(error)))
            return
        for key in client.subscriptions.private_keys():
            self.unregister(client, key)
        client.account, client.expires = account, expires
        self.send(client, protocol.authenticated(request.id, account, expires))

    def subscribe(self, client: Client, request: Subscribe) -> None:
        key = request.key
        if key.market is None and client.account is None:
            self.fail(client, RequestError(request.id, "auth_required", f"channel {key.channel} needs auth first"))
            return
        why = self.state.ready(key.channel, key.market)
        if why is not None:
            self.send(client, protocol.not_ready(request.id, key, NOT_READY_RETRY_MS, why))
            return
        refused = client.subscriptions.add(key, request.depth)
        if refused is not None:
            self.fail(client, RequestError(request.id, refused, f"cannot subscribe: {refused.replace('_', ' ')}"))
            return
        self.register(client, key, request.depth)
        self.send(client, protocol.subscribed("subscribed", request.id, key, request.depth))
        for message, channel in self.initial(client, key, request.depth):
            self.send(client, message, channel)

    # -- connections and HTTP ---------------------------------------------------------------------

    async def handler(self, ws: ServerConnection) -> None:
        address = str(ws.remote_address[0]) if ws.remote_address else "?"
        if not self.per_address.admit(address):
            await ws.close(1013, "too many connections")
            return
        config = self.config
        if config.socket_send_buffer:
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.socket_send_buffer)
        client = Client(ws, address, Subscriptions(config.max_subscriptions), RequestRate(config.subscribe_rate),
                        SendQueue(config.send_queue_bytes))
        self.clients.add(client)
        metrics.CONNECTIONS.set(len(self.clients))
        writer = asyncio.get_running_loop().create_task(self.writer(client))
        try:
            async for frame in ws:
                if client.closing:
                    break
                self.on_frame(client, frame)
        except ConnectionClosed:
            pass
        finally:
            client.closing = True
            client.wakeup.set()
            self.forget(client)
            self.clients.discard(client)
            self.dirty.discard(client)
            self.per_address.release(address)
            metrics.CONNECTIONS.set(len(self.clients))
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == WS_PATH:
            address = str(connection.remote_address[0]) if connection.remote_address else "?"
            if self.per_address.open.get(address, 0) >= self.config.max_connections_per_ip:
                return json_response(429, {"code": "too_many_connections",
                                           "message": "too many connections from this address"})
            return None
        if path == "/metrics":
            return Response(200, "OK", Headers([("Content-Type", CONTENT_TYPE_LATEST)]), generate_latest())
        if not path.startswith("/v1/") and path not in ("/healthz", "/readyz"):
            static = static_file(path)
            if static is not None:
                return static
        status, body = rest.answer(self.state, self.markets, request.path, self.config.worker)
        return json_response(status, body)

    async def run(self, reader: TopicReader | None) -> None:
        config = self.config
        async with serve(self.handler, config.host, config.port, process_request=self.process_request,
                         create_connection=CoalescingConnection, reuse_port=True,
                         max_size=config.max_message_bytes, max_queue=64,
                         ping_interval=config.ping_interval_s, ping_timeout=config.ping_timeout_s,
                         close_timeout=SLOW_CLOSE_TIMEOUT_S, compression=None) as server:
            self.server = server
            log.info("gateway worker serving", worker=config.worker, host=config.host, port=config.port)
            stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def request_stop() -> None:
                if not stop.done():
                    stop.set_result(None)

            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, request_stop)
            ticker = asyncio.get_running_loop().create_task(self.ticker_loop())
            done, _ = await asyncio.wait([stop, ticker], return_when=asyncio.FIRST_COMPLETED)
            if reader is not None:
                reader.stopping.set()
            server.close(close_connections=False)
            for client in list(self.clients):
                self.close_client(client, 1001, "server shutting down")
            ticker.cancel()
            if ticker in done and ticker.exception() is not None:
                raise ticker.exception()  # type: ignore[misc]


def json_response(status: int, body: dict[str, Any]) -> Response:
    phrase = http.HTTPStatus(status).phrase
    return Response(status, phrase, Headers([("Content-Type", "application/json"),
                                             ("Cache-Control", "no-store")]), orjson.dumps(body))


def static_file(path: str) -> Response | None:
    """A file of ``static/`` (``/`` is ``index.html``), None when the folder or file is not there."""
    if not STATIC_DIR.is_dir():
        return None
    relative = "index.html" if path in ("", "/") else path.lstrip("/")
    target = (STATIC_DIR / relative).resolve()
    if STATIC_DIR.resolve() not in target.parents or not target.is_file():
        return None
    kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return Response(200, "OK", Headers([("Content-Type", kind)]), target.read_bytes())


def run_worker(config: GatewayConfig, markets: dict[str, rest.MarketInfo], bootstrap: str, ns: Namespace,
               codec: Codec, *, recent_trades: int, candle_history: int, scan_chunk: int, status_budget: int,
               lookback_ms: int) -> None:
    """One worker process: the reader thread and the asyncio server, until SIGTERM."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        state = MarketState(sorted(markets), recent_trades, candle_history)
        gateway = Gateway(config, markets, state)

        def deliver(batch: Batch) -> None:
            loop.call_soon_threadsafe(gateway.on_records, batch)

        def on_plan(plan: StartPlan) -> None:
            loop.call_soon_threadsafe(gateway.on_plan, plan)

        def on_caught_up(topic: str) -> None:
            loop.call_soon_threadsafe(gateway.on_caught_up, topic)

        def on_failure(error: BaseException) -> None:
            loop.call_soon_threadsafe(setattr, gateway, "reader_failed", error)

        reader = TopicReader(bootstrap, ns, codec, sorted(markets), scan_chunk=scan_chunk, status_budget=status_budget,
                             lookback_ms=lookback_ms, deliver=deliver, on_plan=on_plan, on_caught_up=on_caught_up,
                             on_failure=on_failure)
        reader.start()
        await gateway.run(reader)

    asyncio.run(main())
