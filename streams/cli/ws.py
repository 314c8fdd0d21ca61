"""``xchg ws ...``: the WebSocket market-data gateway (``connectors/websocket``)."""

from __future__ import annotations

import time

import typer

from streams.cli.errors import fail, guarded
from streams.settings import load_settings

app = typer.Typer(help="WebSocket market-data gateway: serve the feed, sign access tokens.", no_args_is_help=True)


@app.command("serve")
@guarded
def serve(
    workers: int | None = typer.Option(None, min=1, max=64, help="worker processes sharing the port "
                                        "(default EXCHANGE_WS_WORKERS)"),
    port: int | None = typer.Option(None, min=1, max=65535, help="port (default EXCHANGE_WS_PORT)"),
) -> None:
    """Serve WebSocket market data and the REST fallback on one port until SIGTERM/SIGINT."""
    from connectors.websocket.rest import MarketInfo
    from connectors.websocket.server import GatewayConfig, run_worker
    from connectors.websocket.workers import supervise
    from streams.markets import MarketRegistry
    from streams.observability import serve_metrics
    from streams.serde.codec import Codec
    from streams.services.kafka import KafkaCluster

    settings = load_settings()
    registry = MarketRegistry.load(settings.markets_file)
    markets = {}
    for m in registry:
        spec = m.spec()
        markets[m.symbol] = MarketInfo(m.symbol, m.base, m.quote, m.price_decimals, m.qty_decimals, spec.tick, spec.lot)
    bootstrap = KafkaCluster(settings).bootstrap_servers()
    count = workers or settings.ws_workers

    def work(index: int) -> None:
        if settings.metrics_port:
            serve_metrics(settings.metrics_port + index)
        config = GatewayConfig(
            host=settings.ws_host, port=port or settings.ws_port, worker=index,
            token_secret=settings.ws_token_secret.get_secret_value().encode(),
            token_max_ttl_ms=settings.ws_token_max_ttl_s * 1000, send_queue_bytes=settings.ws_send_queue_bytes,
            socket_send_buffer=settings.ws_socket_send_buffer,
            max_connections_per_ip=settings.ws_max_connections_per_ip,
            max_subscriptions=settings.ws_max_subscriptions, subscribe_rate=settings.ws_subscribe_rate,
            max_message_bytes=settings.ws_max_message_bytes, ping_interval_s=settings.ws_ping_interval_s,
            ping_timeout_s=settings.ws_ping_timeout_s, heartbeat_ms=settings.ws_heartbeat_ms,
            tick_ms=settings.ws_tick_ms,
        )
        run_worker(config, markets, bootstrap, settings.namespace, Codec(schema_registry_url=settings.schema_registry_url),
                   recent_trades=settings.ws_recent_trades, candle_history=settings.ws_candle_history,
                   scan_chunk=settings.ws_scan_chunk, status_budget=settings.ws_status_scan_records,
                   lookback_ms=settings.ws_lookback_s * 1000)

    try:
        supervise(count, work)
    except OSError as error:
        raise fail(f"cannot serve on {settings.ws_host}:{port or settings.ws_port}: {error.strerror or error}") from None


@app.command("token")
@guarded
def token(
    account: str = typer.Argument(..., help="account id (1 to 64 printable characters)"),
    ttl: int = typer.Option(300, min=1, help="seconds until the token expires"),
) -> None:
    """Print a signed access token for ACCOUNT's private channels (orders, fills)."""
    from connectors.websocket.tokens import TokenError, sign_token

    settings = load_settings()
    if ttl > settings.ws_token_max_ttl_s:
        raise fail(f"--ttl {ttl} is above EXCHANGE_WS_TOKEN_MAX_TTL_S ({settings.ws_token_max_ttl_s}): "
                   "the gateway would refuse the token")
    try:
        signed = sign_token(settings.ws_token_secret.get_secret_value().encode(), account,
                            time.time_ns() // 1_000_000 + ttl * 1000)
    except TokenError as error:
        raise fail(str(error)) from None
    typer.echo(signed)


@app.command("watch")
@guarded
def watch(
    market: str = typer.Argument(..., help="market symbol, e.g. BTC-USD"),
    url: str | None = typer.Option(None, help="gateway URL (default http://EXCHANGE_WS_HOST:EXCHANGE_WS_PORT)"),
    levels: int = typer.Option(10, min=1, max=50, help="book levels shown per side"),
    seconds: float = typer.Option(0.0, min=0.0, help="stop after this many seconds (0: until Ctrl-C)"),
) -> None:
    """Render MARKET's live book, last trades and ticker in the terminal, with the connection
    state (live, reconnecting, polling-stale), through the client library."""
    import asyncio
    import contextlib

    from rich.console import Console
    from rich.live import Live

    from connectors.websocket.client import MarketDataClient
    from connectors.websocket.watchview import WatchView, render
    from streams.markets import MarketRegistry, RegistryError

    settings = load_settings()
    try:
        spec = MarketRegistry.load(settings.markets_file).get(market)
    except RegistryError as error:
        raise fail(str(error)) from None
    client = MarketDataClient(url or f"http://{settings.ws_host}:{settings.ws_port}")
    view = WatchView(market, levels=levels)
    console = Console()

    async def follow() -> None:
        with Live(render(view, spec.price, spec.qty), console=console, refresh_per_second=8,
                  transient=False) as live:
            async for update in client.subscribe(market, ("book", "trades", "ticker", "status")):
                view.apply(update)
                live.update(render(view, spec.price, spec.qty))

    async def main() -> None:
        if seconds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(follow(), seconds)
        else:
            await follow()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    console.line()
    typer.echo(f"{market}: {view.label}, book_seq {view.book.book_seq if view.book else '-'}, "
               f"{view.updates} updates, {view.resyncs} resyncs")
