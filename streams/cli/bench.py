"""``xchg bench ...``: benchmarks that print one JSON line of figures (they are not tests)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from streams.cli.errors import fail

app = typer.Typer(help="Benchmarks: each prints one JSON line of figures.", no_args_is_help=True)


@app.command("engine")
def engine_bench(
    commands: Annotated[int, typer.Option("--commands", min=1, help="Commands in the workload.")] = 1_000_000,
    seed: Annotated[int, typer.Option("--seed", help="Workload seed (same seed → same state_hash).")] = 42,
) -> None:
    """Matching engine throughput on the seeded standard workload (see streams.bench.engine)."""
    from streams.bench.engine import run

    typer.echo(json.dumps(run(commands, seed).as_dict()))


@app.command("pipeline")
def pipeline_bench(
    commands: Annotated[int, typer.Option(help="commands for the throughput phase")] = 200_000,
    batch_size: Annotated[int, typer.Option(help="commands per transaction")] = 2000,
    rate: Annotated[float, typer.Option(help="offered load of the latency phase, commands/s")] = 5000.0,
    seconds: Annotated[float, typer.Option(help="duration of the latency phase")] = 20.0,
) -> None:
    """Engine throughput with exactly-once, the transactional passthrough floor, and latency."""
    from streams.bench.pipeline import run_pipeline
    from streams.runtime.collector import tune_for_streaming
    from streams.services.kafka import KafkaCluster
    from streams.settings import load_settings

    settings = load_settings()
    log_dir = settings.runtime_dir / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        tune_for_streaming()  # the in-process engine of the throughput phase runs as `xchg engine run`
        result = run_pipeline(KafkaCluster(settings).bootstrap_servers(), settings, commands, batch_size, rate,
                              seconds, str(log_dir), lambda m: typer.echo(m, err=True))
    except RuntimeError as error:
        raise fail(f"benchmark failed: {error}") from None
    typer.echo(json.dumps(result))


@app.command("recovery")
def recovery_bench(
    commands: Annotated[int, typer.Option(help="commands processed before the crash")] = 1_000_000,
) -> None:
    """Recovery time after a SIGKILL: process start to the first processed command."""
    from streams.bench.pipeline import run_recovery
    from streams.services.kafka import KafkaCluster
    from streams.settings import load_settings

    settings = load_settings()
    log_dir = settings.runtime_dir / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_recovery(KafkaCluster(settings).bootstrap_servers(), settings, commands, str(log_dir),
                              lambda m: typer.echo(m, err=True))
    except RuntimeError as error:
        raise fail(f"benchmark failed: {error}") from None
    typer.echo(json.dumps(result))


@app.command("ws")
def ws_bench(
    clients: Annotated[str, typer.Option(help="client counts, comma-separated")] = "1000,5000",
    client_processes: Annotated[int, typer.Option(min=1, help="processes holding the client connections")] = 4,
    deliveries: Annotated[int, typer.Option(min=1000, help="frames delivered per throughput burst (all clients)")]
    = 400_000,
    seconds: Annotated[float, typer.Option(min=1.0, help="duration of each latency phase")] = 10.0,
    latency_load: Annotated[float, typer.Option(min=0.01, max=1.0, help="latency phase load, a fraction of the "
                                                "throughput just measured")] = 0.25,
) -> None:
    """WebSocket gateway fan-out per worker, trade commit → client latency, and a bare websockets floor."""
    from connectors.websocket.bench import run

    try:
        counts = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError:
        raise fail(f"--clients must be comma-separated integers, not {clients!r}") from None
    if not counts or min(counts) < 4:
        raise fail("--clients: each count must be at least 4 (one connection per market)")
    try:
        result = run(counts, client_processes, deliveries, seconds, latency_load, lambda m: typer.echo(m, err=True))
    except RuntimeError as error:
        raise fail(f"benchmark failed: {error}") from None
    typer.echo(json.dumps(result))
