"""``xchg marketdata ...``: Derived market data: the faust-streaming candle processor."""

from __future__ import annotations

import typer

from streams.cli.errors import guarded
from streams.settings import load_settings

app = typer.Typer(help="Derived market data: the faust-streaming candle processor.", no_args_is_help=True)


@app.command("run")
@guarded
def run(
    idle_exit: float | None = typer.Option(None, help="stop after this many seconds without trades (once caught up)"),
    instance: str = typer.Option("marketdata-1", help="static group member id (one per running worker)"),
) -> None:
    """Turn trades into 1m/1h/1d OHLCV candles on md.candles (faust worker) until SIGTERM/SIGINT."""
    from streams.observability import get_logger, serve_metrics
    from streams.processors.marketdata import MarketDataConfig
    from streams.processors.marketdata import run as run_worker

    settings = load_settings()
    config = MarketDataConfig(
        bootstrap=settings.bootstrap_servers,
        namespace=settings.namespace,
        idle_exit_s=idle_exit,
        instance_id=instance,
        schema_registry_url=settings.schema_registry_url,
        data_dir=settings.runtime_dir / "marketdata",
    )
    serve_metrics(settings.metrics_port)
    stats = run_worker(config)
    get_logger("marketdata").info("marketdata stopped", trades=stats.trades, published=stats.published,
                                  dead_lettered=stats.dead)
