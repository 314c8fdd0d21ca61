"""``xchg sink ...``: Sinks: the exactly-once TimescaleDB/PostgreSQL sink."""

from __future__ import annotations

import typer

app = typer.Typer(help="Sinks: the exactly-once TimescaleDB/PostgreSQL sink.", no_args_is_help=True)
