"""The engine benchmark's workload is deterministic, really matches, and hashes reproducibly."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from streams.bench.engine import MID, make_workload, run
from streams.cli import app
from streams.domain.commands import Cancel, OrderType, Place, Side


def test_two_runs_give_the_same_hash() -> None:
    first, second = run(20_000, seed=7), run(20_000, seed=7)
    assert first.state_hash == second.state_hash
    assert (first.events, first.trades) == (second.events, second.trades)
    assert run(20_000, seed=8).state_hash != first.state_hash


def test_workload_mix() -> None:
    everything = make_workload(40_000, seed=1)
    assert everything == make_workload(40_000, seed=1)
    commands = everything[20_000:]  # once the book has filled up to its target depth
    places = [c for c in commands if isinstance(c, Place)]
    cancels = [c for c in commands if isinstance(c, Cancel)]
    aggressive = [
        c
        for c in places
        if c.order_type is OrderType.MARKET
        or (c.side is Side.BUY and c.price >= MID)
        or (c.side is Side.SELL and 0 < c.price <= MID)
    ]
    assert 0.25 < len(cancels) / len(commands) < 0.35
    assert 0.09 < len(aggressive) / len(commands) < 0.11
    result = run(40_000, seed=1)
    assert result.trades > 2 * len(aggressive)  # the aggressive orders really trade, most several times


def test_bench_cli_prints_one_json_line() -> None:
    result = CliRunner().invoke(app, ["bench", "engine", "--commands", "5000", "--seed", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    figures = json.loads(lines[0])
    assert set(figures) >= {
        "commands_per_second",
        "events_per_second",
        "commands",
        "events",
        "seconds",
        "state_hash",
    }
    assert figures["commands"] == 5000 and figures["events"] >= 5000
    assert figures["state_hash"] == run(5000, seed=3).state_hash
