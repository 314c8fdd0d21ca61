"""``xchg settle ...``: L2 settlement: batcher, submitter, reconciliation."""

from __future__ import annotations

import typer

app = typer.Typer(help="L2 settlement: batcher, submitter, reconciliation.", no_args_is_help=True)
