"""Demo hook: candles and the database from the topics the engine filled, then a sample OHLCV query.

``ingest_and_report(settings)`` expects the local services up, topics applied and ``trades`` (and
the other engine outputs) already produced in ``settings``' namespace. It

1. applies pending migrations (``xchg db migrate``);
2. runs the candle processor until it is idle and caught up (``xchg marketdata run --idle-exit 5``,
   a real faust worker process, the same command an operator runs);
3. runs the sink in-process until every input partition is written (``xchg sink timescale
   --until-caught-up``);
4. returns, as printable text, the last 1-minute candles of the busiest market, queried as the
   read-only analyst role through ``v_candles``, plus row counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO

import psycopg
from rich.console import Console
from rich.table import Table

from connectors.timescale.migrations import migrate
from connectors.timescale.sink import SinkConfig, TimescaleSink, market_rows
from streams.settings import PROJECT_ROOT, Settings


def run_candles(settings: Settings, bootstrap: str, idle_exit_s: float = 5.0, timeout_s: float = 600) -> None:
    env = {**os.environ, "EXCHANGE_KAFKA_BOOTSTRAP": bootstrap, "EXCHANGE_TOPIC_PREFIX": settings.topic_prefix}
    subprocess.run([sys.executable, "-m", "streams.cli", "marketdata", "run", "--idle-exit", str(idle_exit_s)],
                   env=env, cwd=PROJECT_ROOT, check=True, timeout=timeout_s,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ingest_and_report(settings: Settings, rows: int = 10) -> str:

    bootstrap = settings.bootstrap_servers
    migrate(settings.writer_dsn())
    run_candles(settings, bootstrap)
    config = SinkConfig.from_settings(settings, bootstrap=bootstrap, until_caught_up=True)
    stats = TimescaleSink(config, markets=market_rows(settings.markets_file)).run()

    analyst = settings.writer_dsn() if settings.database_url is not None else settings.analyst_dsn()
    with psycopg.connect(analyst) as conn:
        counts = conn.execute("select (select count(*) from trades), (select count(*) from order_events),"
                              " (select count(*) from candles), (select count(*) from book_snapshots)").fetchone()
        busiest = conn.execute("select market from trades group by market order by count(*) desc limit 1").fetchone()
        market = busiest[0] if busiest else None
        candles = conn.execute(
            "select window_start, open_dec, high_dec, low_dec, close_dec, volume_dec, quote_volume_dec, trade_count,"
            " final from v_candles where market = %s and interval = '1m' order by window_start desc limit %s",
            (market, rows)).fetchall() if market else []

    table = Table(title=f"OHLCV 1m, {market or 'no trades'} (v_candles, as the analyst role)")
    for column in ("window start (UTC)", "open", "high", "low", "close", "volume", "quote volume", "trades", "final"):
        table.add_column(column, justify="right")
    for start, *values, count, final in reversed(candles):
        table.add_row(start.strftime("%Y-%m-%d %H:%M"), *(str(v) for v in values), str(count), "yes" if final else "no")
    out = StringIO()
    console = Console(file=out, width=140, force_terminal=False, highlight=False)
    console.print(table)
    if counts:
        console.print(f"database: {counts[0]} trades, {counts[1]} order events, {counts[2]} candles, "
                      f"{counts[3]} L2 snapshots; this run wrote {stats.records} records "
                      f"({stats.duplicates} duplicates skipped, {stats.gaps} gaps, {stats.dead_letters} dead letters)")
    return out.getvalue()
