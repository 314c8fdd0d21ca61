"""``xchg db migrate``: schema migrations for the analytics database."""

from __future__ import annotations

import typer
from rich.console import Console

from connectors.timescale.migrations import migrate as run_migrations
from streams.cli.errors import fail, guarded
from streams.settings import load_settings

app = typer.Typer(help="The analytics database (PostgreSQL / TimescaleDB).", no_args_is_help=True)
console = Console(highlight=False)


@app.command()
@guarded
def migrate() -> None:
    """Apply pending migrations (re-runnable: applied ones are skipped, changed ones refused)."""
    import psycopg

    try:
        mode, applied = run_migrations(load_settings().writer_dsn())
    except psycopg.OperationalError as error:
        raise fail(f"cannot reach the database: {str(error).strip().splitlines()[0]} "
                   "(start it with `xchg infra up postgres`)") from None
    for migration in applied:
        console.print(f"[green]applied[/green] {migration.path.name}")
    console.print(f"storage mode: {mode}; {len(applied)} migration(s) applied now")


@app.command()
@guarded
def rebuild(
    since: str | None = typer.Option(None, help="rebuild from this time on (ISO 8601, UTC if no zone); default: all"),
    yes: bool = typer.Option(False, "--yes", help="do not ask before deleting rows"),
) -> None:
    """Rebuild the analytics tables from the topics (progress bar), then verify them against the topics.

    Refused (one ``error:`` line, exit 1) while a sink of the database runs; exits 1 when the
    verification finds a row missing, extra or different."""
    import psycopg

    from connectors.timescale.errors import SinkError
    from connectors.timescale.rebuild import run_cli
    from streams.runtime.clients import ClientFatal

    try:
        run_cli(load_settings(), since, yes, console)
    except SinkError as error:
        raise fail(str(error)) from None
    except ClientFatal as error:
        raise fail(f"the rebuild's Kafka client cannot go on ({error}); run the rebuild again") from None
    except psycopg.OperationalError as error:
        raise fail(f"cannot reach the database: {str(error).strip().splitlines()[0]} "
                   "(start it with `xchg infra up postgres`)") from None
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as error:
        raise fail(f"the database schema is older than this command ({error.diag.message_primary}): "
                   "run `xchg db migrate`") from None
