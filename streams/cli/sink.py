"""``xchg sink ...``: Sinks: the exactly-once TimescaleDB/PostgreSQL sink (and ``xchg bench sink``)."""

from __future__ import annotations

import json

import typer

from streams.cli.bench import app as bench_app
from streams.cli.errors import fail, guarded
from streams.settings import load_settings

app = typer.Typer(help="Sinks: the exactly-once TimescaleDB/PostgreSQL sink.", no_args_is_help=True)


@app.command("timescale")
@guarded
def timescale(
    until_caught_up: bool = typer.Option(False, "--until-caught-up", help="stop once every input partition is written"),
    idle_exit: float | None = typer.Option(None, help="stop after this many seconds without input"),
    max_runtime: float | None = typer.Option(None, help="stop after this many seconds"),
    batch_size: int | None = typer.Option(None, help="records per database transaction at most"),
) -> None:
    """Write trades, order events, candles and L2 snapshots to PostgreSQL/TimescaleDB, exactly once.

    Exits 1 with one ``error:`` line when it must not write: the database holds another stream,
    another sink of the name (or a rebuild) is running, a record conflicts with a stored row, or
    the Kafka client is fenced or failed fatally."""
    import psycopg

    from connectors.timescale.errors import SinkError
    from connectors.timescale.sink import SinkConfig, TimescaleSink, market_rows
    from streams.observability import get_logger, serve_metrics
    from streams.runtime.clients import ClientFatal
    from streams.runtime.collector import tune_for_streaming

    settings = load_settings()
    config = SinkConfig.from_settings(
        settings, batch_size=batch_size or settings.sink_batch_size, until_caught_up=until_caught_up,
        idle_exit_s=idle_exit, max_runtime_s=max_runtime,
    )
    serve_metrics(settings.metrics_port)
    sink = TimescaleSink(config, markets=market_rows(settings.markets_file))
    get_logger("sink").info("sink starting", sink=config.name, namespace=settings.namespace.prefix)
    tune_for_streaming()
    try:
        stats = sink.run()
    except SinkError as error:
        raise fail(str(error)) from None
    except ClientFatal as error:
        raise fail(f"sink {config.name}: the Kafka client cannot go on ({error}); restart the sink") from None
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as error:
        raise fail(f"the database schema is older than this sink ({error.diag.message_primary}): "
                   "run `xchg db migrate`") from None
    get_logger("sink").info("sink stopped", records=stats.records, rows=dict(stats.rows),
                            duplicates=stats.duplicates, gaps=stats.gaps, dead_letters=stats.dead_letters,
                            late=stats.late, already_stored=stats.already_stored)


@bench_app.command("sink")
@guarded
def bench_sink(
    trades: int = typer.Option(200_000, "--trades", min=1000, help="trades produced and ingested"),
    candle_trades: int = typer.Option(5_000, "--candle-trades", min=100, help="trades through the candle processor"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="sink and COPY runs; medians are reported"),
) -> None:
    """End-to-end sink throughput vs raw COPY into the same database, and candle processor speed."""
    from connectors.timescale.bench import run
    from connectors.timescale.errors import SinkError
    from streams.runtime.collector import tune_for_streaming

    tune_for_streaming()  # as `xchg sink timescale` runs
    try:
        result = run(load_settings(), trades, candle_trades, rounds)
    except SinkError as error:  # e.g. an external database that holds another stream
        raise fail(str(error)) from None
    typer.echo(json.dumps(result))
