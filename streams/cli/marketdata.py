"""``xchg marketdata ...``: Derived market data: the faust-streaming candle processor."""

from __future__ import annotations

import typer

app = typer.Typer(help="Derived market data: the faust-streaming candle processor.", no_args_is_help=True)
