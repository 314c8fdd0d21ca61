"""``xchg engine ...``: run the matching engine offline (conformance, replay).

- ``xchg engine conformance PATH...``: run scenario files (or every ``*.json`` in directories);
  prints PASS/FAIL per scenario, a unified diff (expected → actual) for each failure, and a
  summary; exits 1 if any scenario fails or cannot be read.
- ``xchg engine replay --market-spec SPEC.json --input COMMANDS.jsonl --output EVENTS.jsonl``:
  writes every event as a JSON line (format in ``streams.offline.replay``) and prints one JSON
  summary line to stdout: ``{"commands": N, "events": M, "state_hash": "<hex sha256>"}``.
  Expected failures (missing file, bad JSON with its line number, unknown command type) print a
  one-line ``error: ...`` to stderr and exit 2, without a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from streams.errors import EXIT_OPERATOR, EXIT_USAGE
from streams.offline.replay import ReplayError, load_replay_input, replay
from streams.offline.scenario import ScenarioError, load_scenario, run_scenario, scenario_files

app = typer.Typer(help="The matching engine: conformance scenarios and offline replay.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_OPERATOR)


@app.command()
def conformance(
    paths: Annotated[list[Path], typer.Argument(help="Scenario files or directories of *.json scenarios.")],
) -> None:
    """Run conformance scenarios through the engine; non-zero exit if any fails."""
    console = Console(highlight=False, soft_wrap=True)
    files = scenario_files(paths)
    if not files:
        raise _fail("no scenario files found in: " + " ".join(str(p) for p in paths))
    passed = failed = 0
    for path in files:
        try:
            scenario = load_scenario(path)
            result = run_scenario(scenario)
        except ScenarioError as exc:
            failed += 1
            console.print(Text.assemble(("FAIL ", "bold red"), f"{path.name}: {exc}"))
            continue
        if result.passed:
            passed += 1
            console.print(Text.assemble(("PASS ", "bold green"), scenario.name))
            continue
        failed += 1
        console.print(Text.assemble(("FAIL ", "bold red"), f"{scenario.name} ({path})"))
        for line in result.diff:
            style = (
                "red"
                if line.startswith("-")
                else "green"
                if line.startswith("+")
                else "cyan"
                if line.startswith("@")
                else ""
            )
            console.print(Text("    " + line, style=style))
    console.print(f"{passed} passed, {failed} failed")
    if failed:
        raise typer.Exit(EXIT_USAGE)  # a check that found failures (streams.errors)


@app.command("replay")
def replay_command(
    market_spec: Annotated[
        Path, typer.Option("--market-spec", help="JSON market object (as in a scenario).")
    ],
    input_path: Annotated[Path, typer.Option("--input", help="Command log: one JSON command per line.")],
    output: Annotated[Path, typer.Option("--output", help="Where to write the events, one JSON per line.")],
) -> None:
    """Replay a command log; write events as JSON lines and print the final state hash."""
    try:
        inp = load_replay_input(market_spec, input_path)
    except ReplayError as exc:
        raise _fail(str(exc)) from None
    try:
        with output.open("w", encoding="utf-8") as out:
            summary = replay(inp, out)
    except OSError as exc:
        raise _fail(f"cannot write {output}: {exc.strerror or exc}") from None
    typer.echo(
        json.dumps({"commands": summary.commands, "events": summary.events, "state_hash": summary.state_hash})
    )
