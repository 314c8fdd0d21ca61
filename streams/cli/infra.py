"""``xchg infra up|down|status|logs|reset``: the local Kafka, PostgreSQL and anvil services."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from streams.cli.errors import fail, guarded
from streams.services import stack
from streams.settings import load_settings

app = typer.Typer(help="Start, stop and inspect the local services.", no_args_is_help=True)
console = Console(highlight=False)


def _services(names: list[str] | None) -> tuple[str, ...]:
    chosen = tuple(names or stack.SERVICES)
    unknown = [n for n in chosen if n not in stack.SERVICES]
    if unknown:
        raise fail(f"unknown service {unknown[0]!r}; choose from {', '.join(stack.SERVICES)}")
    return chosen


@app.command()
@guarded
def up(
    services: list[str] | None = typer.Argument(None, help="kafka, postgres, anvil (default: all)"),
    brokers: int | None = typer.Option(None, help="Kafka brokers: 1 (default) or 3 (rf 3, min ISR 2)"),
) -> None:
    """Start the services (idempotent: running ones are left alone) and wait until they answer."""
    settings = load_settings()
    stack.up(settings, _services(services), brokers, report=lambda m: console.print(f"[dim]{m}[/dim]"))
    _print_status()


@app.command()
@guarded
def install() -> None:
    """Fetch what the services need and is missing: Kafka jars (Maven), anvil/forge/solc (npm)."""
    from streams.services.chain import ensure_node_modules
    from streams.services.kafka import KafkaCluster

    settings = load_settings()
    if settings.local_kafka:
        cluster = KafkaCluster(settings)
        if cluster.version() is None:
            console.print("[dim]fetching the Kafka broker jars with Maven ...[/dim]")
        cluster.ensure_jars()
    if settings.local_chain:
        ensure_node_modules()
    console.print("[dim]prerequisites installed[/dim]")


@app.command()
@guarded
def down(services: list[str] | None = typer.Argument(None, help="kafka, postgres, anvil (default: all)")) -> None:
    """Stop the services the project started (clean shutdown; data is kept)."""
    stopped = stack.down(load_settings(), _services(services))
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
@guarded
def status() -> None:
    """Versions and endpoints of each service; exit 1 when one is not answering."""
    if not _print_status():
        raise typer.Exit(1)


@app.command()
@guarded
def logs(service: str = typer.Argument(..., help="kafka, postgres or anvil"),
         lines: int = typer.Option(40, "-n", help="lines from the end of each log")) -> None:
    """Print the end of a service's log files."""
    (name,) = _services([service])
    for path in stack.log_files(load_settings(), name):
        console.rule(str(path))
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            console.print("[dim](no log yet)[/dim]")
            continue
        console.print("\n".join(text.splitlines()[-lines:]), markup=False)


@app.command()
@guarded
def reset(yes: bool = typer.Option(False, "--yes", help="confirm deleting all local data")) -> None:
    """Delete the local Kafka and PostgreSQL data (services must be stopped)."""
    from streams.services.kafka import KafkaCluster
    from streams.services.postgres import PostgresCluster

    if not yes:
        raise fail("this deletes every topic and table of the local services: add --yes")
    settings = load_settings()
    KafkaCluster(settings).reset()
    PostgresCluster(settings).reset()
    console.print("local Kafka and PostgreSQL data deleted")


def _print_status() -> bool:
    table = Table("service", "state", "detail")
    rows = stack.status(load_settings())
    for row in rows:
        table.add_row(row.name, "[green]up[/green]" if row.running else "[red]down[/red]", row.detail)
    console.print(table)
    return all(r.running for r in rows)
