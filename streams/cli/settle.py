"""``xchg settle ...``: L2 settlement: deploy (dev chain), batcher, submitter, reconciliation.

- ``xchg settle deploy [--fund-accounts N] [--fund ID ...]``: mock tokens + Settlement on the
  local chain, deployment record under ``.run/settlement/``; funds and deposits for dev accounts.
- ``xchg settle batch [--flush-idle S] [--idle-exit S]``: trades → settlement.batches.
- ``xchg settle run [--idle-exit S]``: the submitter (one per operator key). It rides out a
  database outage (circuit with capped backoff, see ``Submitter.run``); where resuming is not safe
  (the sender was taken over meanwhile) it exits with a one-line error and code 1.
- ``xchg settle status``: batches and their states.  ``xchg settle reconcile``: exit 1 on mismatch.
- ``xchg settle resume MARKET``: lift a halt after a FAILED batch and re-queue it.
- ``xchg bench settlement``: gas per trade at 1000 trades per batch (one JSON line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from streams.cli.bench import app as bench_app
from streams.cli.errors import fail, guarded
from streams.errors import EXIT_USAGE

if TYPE_CHECKING:  # settlement modules load web3, which a CLI start must not pay for
    from connectors.settlement.chain import Deployment
    from connectors.settlement.economics import Asset, MarketUnits
    from streams.settings import Settings

app = typer.Typer(help="L2 settlement: batcher, submitter, reconciliation.", no_args_is_help=True)


def _context() -> tuple[Settings, dict[str, Asset], dict[str, MarketUnits]]:
    from connectors.settlement.economics import check_markets, load_assets
    from streams.markets import MarketRegistry
    from streams.settings import load_settings

    settings = load_settings()
    assets = load_assets(settings.settlement_assets_file)
    units = check_markets(MarketRegistry.load(settings.markets_file), assets, settings.settlement_batch_trades)
    return settings, assets, units


@contextmanager
def _client_errors() -> Iterator[None]:
    """A Kafka client that cannot go on (``ClientFatal``) or a database unreachable at start-up:
    one line and exit code 1 (a supervisor restarts the process), never a traceback."""
    import psycopg

    from streams.runtime.clients import ClientFatal

    try:
        yield
    except ClientFatal as error:
        raise fail(f"kafka client cannot go on: {error}") from None
    except psycopg.OperationalError as error:
        lines = str(error).strip().splitlines()
        raise fail(f"database unreachable: {lines[0] if lines else type(error).__name__}") from None


def _deployment(settings: Settings) -> Deployment:
    from connectors.settlement.chain import Deployment, deployment_path

    return Deployment.load(deployment_path(settings))


@app.command("deploy")
@guarded
def deploy(
    fund_accounts: Annotated[int, typer.Option("--fund-accounts", min=0, help="Fund acct000..acctN-1.")] = 0,
    fund: Annotated[list[str] | None, typer.Option("--fund", help="Fund this account id (repeatable).")] = None,
    reuse: Annotated[bool, typer.Option("--reuse/--new", help="Keep an existing deployment with code.")] = True,
) -> None:
    """Deploy mock tokens and the Settlement contract on the local chain; fund dev accounts."""
    from connectors.settlement.chain import fund_accounts as fund_fn
    from connectors.settlement.demo import ensure_deployment

    settings, assets, _ = _context()
    deployment = ensure_deployment(settings, assets, reuse=reuse)
    accounts = [f"acct{i:03d}" for i in range(fund_accounts)] + list(fund or [])
    funded = fund_fn(settings, deployment, accounts, assets) if accounts else 0
    typer.echo(json.dumps({"settlement": deployment.settlement, "tokens": deployment.tokens,
                           "operator": deployment.operator, "funded": funded}))


@app.command("batch")
@guarded
def batch(
    flush_idle: Annotated[float | None, typer.Option("--flush-idle", help="Close open batches after S s idle.")] = None,
    idle_exit: Annotated[float | None, typer.Option("--idle-exit", help="Exit after S s without trades.")] = None,
    group: Annotated[str | None, typer.Option("--group", help="Consumer group = transactional id.")] = None,
) -> None:
    """Form deterministic batches from trades into settlement.batches (exactly once)."""
    from connectors.settlement.batch_service import BatcherRun, BatchService

    settings, _, units = _context()
    run = BatcherRun(group=group, transactional_id=group, flush_idle_s=flush_idle, idle_exit_s=idle_exit)
    with _client_errors():
        emitted = BatchService(settings, _deployment(settings), units, run).run()
    typer.echo(json.dumps({"batches": emitted}))


@app.command("run")
@guarded
def run(
    idle_exit: Annotated[float | None, typer.Option("--idle-exit", help="Exit once all is final and S s idle.")] = None,
) -> None:
    """The submitter: send batches, replace, follow reorgs, finalize."""
    import signal

    from connectors.settlement.submitter import Submitter, ensure_schema
    from streams.observability import serve_metrics

    settings, _, _ = _context()
    with _client_errors():
        ensure_schema(settings)
        serve_metrics(settings.metrics_port)
        submitter = Submitter(settings, _deployment(settings)).acquire()
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        try:
            submitter.run(stop=lambda: bool(stopping), idle_exit_s=idle_exit)
        finally:
            submitter.close()
    typer.echo(json.dumps(submitter.counters))


@app.command("status")
@guarded
def status() -> None:
    """Batches of this deployment with their state."""
    import psycopg

    settings, _, _ = _context()
    deployment = _deployment(settings)
    with psycopg.connect(settings.writer_dsn()) as db:
        rows = db.execute("select market, batch_seq, first_trade_id, last_trade_id, state, bumps, gas_used, tx_hash"
                          " from settlement_batches where deployment = %s order by market, batch_seq",
                          (deployment.settlement,)).fetchall()
        halts = db.execute("select market, batch_seq, reason from settlement_halts where deployment = %s",
                           (deployment.settlement,)).fetchall()
    for m, seq, first, last, state, bumps, gas, tx in rows:
        typer.echo(f"{m} #{seq} {first}..{last} {state} bumps={bumps} gas={gas} tx={bytes(tx).hex() if tx else '-'}")
    for m, seq, reason in halts:
        typer.echo(f"HALTED {m} at batch {seq}: {reason}")


@app.command("reconcile")
@guarded
def reconcile() -> None:
    """Compare on-chain BatchSettled events and balances with the batches and the trade log."""
    from connectors.settlement.reconcile import reconcile as run_reconcile

    settings, _, units = _context()
    report = run_reconcile(settings, _deployment(settings), units)
    typer.echo(report.text())
    if not report.ok:
        raise typer.Exit(EXIT_USAGE)  # the check found a difference (streams.errors)


@app.command("resume")
@guarded
def resume(market: Annotated[str, typer.Argument(help="Market symbol, e.g. BTC-USD.")]) -> None:
    """Lift a market's settlement halt (after a FAILED batch) and re-queue its failed batches."""
    from connectors.settlement.submitter import ensure_schema, resume_market

    settings, _, _ = _context()
    ensure_schema(settings)
    requeued = resume_market(settings, _deployment(settings), market)
    typer.echo(f"{market}: settlement resumed, {requeued} batch(es) re-queued")


@bench_app.command("settlement")
@guarded
def bench_settlement(
    trades: Annotated[int, typer.Option("--trades", min=1000, help="Trades (1000 per batch).")] = 3000,
    accounts: Annotated[int, typer.Option("--accounts", min=2, help="Trading accounts.")] = 100,
) -> None:
    """Gas per trade and trades per transaction of settlement batches at 1000 trades per batch."""
    from connectors.settlement.bench import run as run_bench

    typer.echo(json.dumps(run_bench(trades, accounts)))
