"""``xchg bench ...``: benchmarks that print one JSON line of figures (they are not tests)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(help="Benchmarks: each prints one JSON line of figures.", no_args_is_help=True)


@app.command("engine")
def engine_bench(
    commands: Annotated[int, typer.Option("--commands", min=1, help="Commands in the workload.")] = 1_000_000,
    seed: Annotated[int, typer.Option("--seed", help="Workload seed (same seed → same state_hash).")] = 42,
) -> None:
    """Matching engine throughput on the seeded standard workload (see streams.bench.engine)."""
    from streams.bench.engine import run

    typer.echo(json.dumps(run(commands, seed).as_dict()))
