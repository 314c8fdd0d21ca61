"""Offline replay: a JSON-lines command log through one market's engine, events out as JSON lines.

Input: a market-spec file (JSON shaped like a scenario's ``market`` object) and a command log with
one command per line in the scenarios' ``commands`` format (decimal strings; blank lines are
skipped). As for scenarios, price/qty decimals are the most decimal places in the spec and the log.

Output: one JSON object per event, keys sorted::

    {"seq": 7, "ts": 1700000000003, "type": "trade", "trade_id": 2, "price": "100.00",
     "qty": "1.500", "maker_order_id": "b1", "maker_account": "alice", "taker_order_id": "s1",
     "taker_account": "dave", "taker_side": "sell"}

i.e. ``streams.domain.events.event_to_dict`` (enums and reasons as wire names, ``seq``,
``trade_id``, ``ts`` as integers) with ``price``, ``qty`` and ``remaining`` as fixed-point
decimal strings in the market's decimals (a market order's price is ``"0"`` in those decimals).
The caller prints the summary (``ReplaySummary``) including the final state hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from streams.domain.commands import Command
from streams.domain.events import Event, event_to_dict
from streams.domain.market import MarketSpec
from streams.engine import Engine
from streams.errors import OperatorError
from streams.offline.scenario import ScenarioError, Units, choose_units, parse_command, parse_market


class ReplayError(OperatorError, ValueError):
    """The replay input cannot be used; the message is one line and says where."""


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    commands: int
    events: int
    state_hash: str
    price_decimals: int
    qty_decimals: int


def _read_text(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReplayError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise ReplayError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    return text


def read_commands(path: Path) -> list[tuple[int, Any]]:
    """``(line number, decoded JSON)`` per non-blank line of a command log."""
    text = _read_text(path, "input")
    out: list[tuple[int, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ReplayError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    return out


def event_line(event: Event, units: Units) -> str:
    """One event as a canonical JSON line (amounts as decimal strings)."""
    d = event_to_dict(event)
    if "price" in d:
        d["price"] = units.price_str(d["price"])
    for key in ("qty", "remaining"):
        if key in d:
            d[key] = units.qty_str(d[key])
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class ReplayInput:
    spec: MarketSpec
    units: Units
    commands: list[Command]


def load_replay_input(spec_path: Path, input_path: Path) -> ReplayInput:
    """Read and parse the market spec and the whole command log; ``ReplayError`` on bad input."""
    market_text = _read_text(spec_path, "market-spec")
    try:
        market = json.loads(market_text)
    except json.JSONDecodeError as exc:
        raise ReplayError(f"{spec_path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(market, dict):
        raise ReplayError(f"{spec_path}: the market spec must be a JSON object")
    lines = read_commands(input_path)
    try:
        units = choose_units(market)
        for lineno, doc in lines:
            try:
                line_units = choose_units({}, doc)
            except ScenarioError as exc:
                raise ScenarioError(f"{input_path}:{lineno}: {exc}") from None
            units = Units(
                max(units.price_decimals, line_units.price_decimals),
                max(units.qty_decimals, line_units.qty_decimals),
            )
        spec = parse_market(market, units)
        commands = [parse_command(doc, units, f"{input_path}:{lineno}") for lineno, doc in lines]
    except ScenarioError as exc:
        raise ReplayError(str(exc)) from None
    return ReplayInput(spec, units, commands)


def replay(inp: ReplayInput, out: TextIO) -> ReplaySummary:
    """Run the commands through a fresh engine, writing one JSON line per event to ``out``."""
    engine = Engine(inp.spec)
    units = inp.units
    events = 0
    for cmd in inp.commands:
        for event in engine.apply(cmd):
            out.write(event_line(event, units))
            out.write("\n")
            events += 1
    return ReplaySummary(
        len(inp.commands), events, engine.state_hash(), units.price_decimals, units.qty_decimals
    )
