"""``xchg ticker ...``: the faust-streaming ticker processor (trades + md.book -> md.ticker)."""

from __future__ import annotations

import typer

from streams.cli.errors import fail, guarded
from streams.settings import load_settings

app = typer.Typer(help="Tickers: the faust-streaming processor of md.ticker.", no_args_is_help=True)


@app.command("run")
@guarded
def run(
    idle_exit: float | None = typer.Option(None, help="stop after this many seconds without input (once caught up)"),
    instance: str = typer.Option("ticker-1", help="static group member id (one per running worker)"),
) -> None:
    """Fold trades and md.book into one ticker per market on md.ticker (faust worker) until
    SIGTERM/SIGINT; exits 70 if the agent fails (for a process manager to restart it)."""
    from streams.errors import EXIT_AGENT_CRASHED
    from streams.observability import get_logger, serve_metrics
    from streams.processors.ticker_worker import InputsNotCopartitioned, TickerConfig, check_inputs
    from streams.processors.ticker_worker import run as run_worker

    settings = load_settings()
    config = TickerConfig(
        bootstrap=settings.bootstrap_servers,
        namespace=settings.namespace,
        idle_exit_s=idle_exit,
        instance_id=instance,
        schema_registry_url=settings.schema_registry_url,
        data_dir=settings.runtime_dir / "ticker",
    )
    try:
        partitions = check_inputs(config)
    except InputsNotCopartitioned as error:
        raise fail(str(error)) from None
    config = TickerConfig(**{**config.__dict__, "partitions": partitions})
    serve_metrics(settings.metrics_port)
    stats = run_worker(config)
    get_logger("ticker").info("ticker stopped", folded=stats.folded, skipped=stats.skipped, published=stats.published)
    if stats.crashed is not None:
        raise fail(f"the ticker agent failed: {stats.crashed}", code=EXIT_AGENT_CRASHED)
