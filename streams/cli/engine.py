"""``xchg engine ...``: run the matching engine offline (conformance, replay)."""

from __future__ import annotations

import typer

app = typer.Typer(help="The matching engine: conformance scenarios and offline replay.", no_args_is_help=True)
