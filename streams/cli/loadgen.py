"""``xchg loadgen``: a seeded order flow into ``orders.commands``."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from streams.cli.errors import fail, guarded
from streams.settings import load_settings

console = Console(highlight=False, stderr=True)


@guarded
def loadgen(
    rate: float = typer.Option(2000.0, help="commands per second (0 = as fast as possible)"),
    duration: float | None = typer.Option(None, help="seconds to run (with --rate)"),
    count: int | None = typer.Option(None, help="commands to send (overrides --duration)"),
    markets: str | None = typer.Option(None, help="comma-separated symbols (default: every market)"),
    seed: int = typer.Option(1, help="seed of the order flow (same seed, same commands)"),
    accounts: int = typer.Option(200, help="number of trading accounts"),
) -> None:
    """Produce the standard order mix (see streams/loadgen.py); prints one JSON summary line."""
    from streams.loadgen import OrderFlow, produce_flow
    from streams.markets import MarketRegistry
    from streams.runtime.clients import make_producer
    from streams.serde.codec import Codec

    settings = load_settings()
    registry = MarketRegistry.load(settings.markets_file)
    symbols = [s.strip() for s in markets.split(",")] if markets else registry.symbols()
    specs = [registry.get(s).spec() for s in symbols]
    if rate < 0:
        raise fail("--rate must be >= 0")
    if count is None:
        if duration is None or rate == 0:
            raise fail("give --count, or --duration with a non-zero --rate")
        count = int(rate * duration)
    flow = OrderFlow(specs, seed, accounts=accounts)
    producer = make_producer(settings.bootstrap_servers)
    report = produce_flow(producer, Codec(schema_registry_url=settings.schema_registry_url), flow, count,
                          rate or None, ns=settings.namespace,
                          progress=lambda i: console.print(f"[dim]sent {i}[/dim]") if i and i % 100000 == 0 else None)
    print(json.dumps({"sent": report.sent, "seconds": round(report.seconds, 3), "rate": round(report.rate, 1),
                      "late_max_ms": round(report.late_max_ms, 1), "per_market": report.per_market}))
