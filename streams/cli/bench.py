"""``xchg bench ...``: benchmarks that print one JSON line of figures (they are not tests)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks: each prints one JSON line of figures.", no_args_is_help=True)
