"""``xchg verify stream|replay``: check the committed outputs and compare engine state hashes."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from streams.cli.errors import fail, guarded
from streams.errors import EXIT_USAGE
from streams.settings import load_settings

app = typer.Typer(help="Check the output topics and the engine's state.", no_args_is_help=True)
console = Console(highlight=False)


def _bootstrap() -> str:
    from streams.services.kafka import KafkaCluster

    return KafkaCluster(load_settings()).bootstrap_servers()


@app.command()
@guarded
def stream(outcomes: bool = typer.Option(False, help="also check one outcome per command")) -> None:
    """Read orders.events, trades and md.book (read_committed): report gaps and duplicates."""
    from streams.runtime.verify import check_outcomes, check_streams
    from streams.serde.codec import Codec

    settings = load_settings()
    codec = Codec(schema_registry_url=settings.schema_registry_url)
    report = check_streams(_bootstrap(), codec, settings.namespace)
    table = Table("market", "last seq", "last trade id", "book deltas to seq")
    for market in sorted(set(report.events.last) | set(report.trades.last)):
        table.add_row(market, str(report.events.last.get(market, 0)), str(report.trades.last.get(market, 0)),
                      str(report.book.last.get(market, "-")))
    console.print(table)
    for name, tracker in (("orders.events", report.events), ("trades", report.trades)):
        console.print(f"{name}: {tracker.seen} records, {len(tracker.gaps)} gaps, {tracker.duplicates} duplicates")
        for gap in tracker.gaps[:10]:
            console.print(f"  [red]gap[/red] {gap.market}: expected {gap.expected}, got {gap.got}")
    console.print(f"md.book: {report.book.snapshots} snapshots, {len(report.book.breaks)} chain breaks")
    if report.trade_ids != report.trade_ids_in_events:
        console.print("[red]trades and the TradeExecuted events of orders.events differ[/red]")
    clean = report.clean
    if outcomes:
        out = check_outcomes(_bootstrap(), codec, settings.namespace)
        console.print(f"orders.commands: {out.commands} commands, {out.dead_letters} dead letters, "
                      f"{len(out.missing)} without outcome, {len(out.duplicated)} with several")
        clean = clean and out.clean
    if not clean:
        raise typer.Exit(EXIT_USAGE)  # the check found a problem (streams.errors)


@app.command()
@guarded
def replay(partition: int = typer.Option(..., min=0, help="orders.commands partition to rebuild")) -> None:
    """Rebuild a partition offline from its whole input log and compare the live state hashes."""
    from confluent_kafka.admin import AdminClient

    from streams.markets import MarketRegistry
    from streams.runtime.reader import topic_partitions
    from streams.runtime.recovery import recover
    from streams.serde.codec import Codec
    from streams.serde.topics import ORDERS_COMMANDS

    settings = load_settings()
    bootstrap = _bootstrap()
    # Checked up front: reading a partition that does not exist would only fail after the
    # reader's retries for a topic whose metadata is still on its way.
    topic = settings.namespace(ORDERS_COMMANDS)
    count = len(topic_partitions(AdminClient({"bootstrap.servers": bootstrap}), topic))
    if partition >= count:
        raise fail(f"{topic} has {count} partition(s) (0..{count - 1}); there is no partition {partition}"
                   if count else f"{topic} does not exist on {bootstrap}")
    state, report = recover(
        bootstrap, MarketRegistry.load(settings.markets_file), Codec(schema_registry_url=settings.schema_registry_url),
        partition, settings.namespace, target_offset=None, use_snapshot=False, strict=False,
        progress=lambda done, total: console.print(f"[dim]replayed {done}/{total}[/dim]"),
    )
    if not state.engines:
        # Nothing to compare: "0 mismatches" would read as a clean bill of health.
        console.print(f"partition {partition}: no market has commands in it ({report.replayed} record(s) "
                      f"replayed, none for a known market): nothing was checked")
        return
    if not report.hashes_checked:
        console.print(f"[yellow]partition {partition}: replayed {report.replayed} commands in "
                      f"{report.seconds:.1f}s, but the live engine recorded no state hash to compare "
                      f"(it publishes one every EXCHANGE_ENGINE_HASH_EVERY commands): nothing was checked[/yellow]")
    else:
        console.print(f"partition {partition}: replayed {report.replayed} commands in {report.seconds:.1f}s, "
                      f"compared {report.hashes_checked} recorded hashes, {len(report.mismatches)} mismatches")
    for market in sorted(state.engines):
        engine = state.engines[market]
        console.print(f"  {market}: seq {engine.seq}, trade id {engine.trade_id}, hash {engine.state_hash()[:16]}")
    for line in report.mismatches[:20]:
        console.print(f"  [red]mismatch[/red] {line}")
    if report.mismatches:
        raise typer.Exit(EXIT_USAGE)
