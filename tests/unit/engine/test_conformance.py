"""The repository's conformance scenarios (``tests/conformance/``), run through the same code as
``xchg engine conformance``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli import app
from streams.domain.events import CancelReason, OrderCancelled
from streams.errors import EXIT_USAGE
from streams.offline.scenario import (
    ScenarioError,
    choose_units,
    load_scenario,
    parse_market,
    run_commands,
    run_scenario,
    scenario_files,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
SCENARIOS = REPO_ROOT / "tests" / "conformance"
FILES = scenario_files([SCENARIOS])


def test_scenarios_are_present() -> None:
    assert len(FILES) >= 40, f"expected the conformance scenarios in {SCENARIOS}"
    covered = {int(m.group(1)) for p in FILES if (m := re.match(r"rule(\d\d)-", p.name))}
    assert covered == set(range(1, 13)), f"rules without a scenario: {set(range(1, 13)) - covered}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario_is_named_and_described(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["name"] == path.stem
    assert isinstance(doc.get("description"), str) and doc["description"].strip()


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path) -> None:
    result = run_scenario(load_scenario(path))
    assert result.passed, "\n".join(result.diff)


def test_cancel_all_cancels_in_entry_order() -> None:
    """The expectation format shows only the book; the events show the order of the cancels."""
    scenario = load_scenario(SCENARIOS / "commands-cancel-all-in-entry-order.json")
    _, events = run_commands(scenario.spec, scenario.commands)
    cancelled = [e.order_id for e in events if isinstance(e, OrderCancelled) and e.reason is CancelReason.CANCEL_ALL]
    assert cancelled == ["k-2", "k-3", "k-1", "k-4"]  # k-1 re-entered (amend to a new price) after k-3


def test_cli_passes_all_scenarios() -> None:
    result = CliRunner().invoke(app, ["engine", "conformance", str(SCENARIOS)])
    assert result.exit_code == 0, result.output
    assert f"{len(FILES)} passed, 0 failed" in result.output


def test_cli_broken_scenario_fails_with_diff(tmp_path: Path) -> None:
    doc = json.loads((SCENARIOS / "rule01-price-time-priority.json").read_text())
    doc["expect"]["trades"][0]["qty"] = "2"  # wrong on purpose
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    shutil.copy(SCENARIOS / "rule02-partial-fill-rests.json", tmp_path / "ok.json")
    result = CliRunner().invoke(app, ["engine", "conformance", str(tmp_path)])
    assert result.exit_code == EXIT_USAGE  # a check that found failures
    assert "FAIL rule01-price-time-priority" in result.output
    assert "PASS rule02-partial-fill-rests" in result.output
    assert '-   "qty": "2"' in result.output and '+   "qty": "1"' in result.output
    assert "1 passed, 1 failed" in result.output


def test_cli_unreadable_scenario_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",\n "market": ')
    result = CliRunner().invoke(app, ["engine", "conformance", str(bad)])
    assert result.exit_code == EXIT_USAGE  # a check that found failures
    assert "invalid JSON at line 2" in result.output


def test_numbers_compare_as_numbers(tmp_path: Path) -> None:
    """ "1" equals "1.000000" and "250.45" equals "250.450" in expectations."""
    doc = json.loads((SCENARIOS / "rule02-partial-fill-rests.json").read_text())
    assert doc["expect"]["trades"][0]["qty"] == "1" and doc["expect"]["book"]["bids"][0]["price"] == "250.45"
    doc["expect"]["trades"][0]["qty"] = "1.000000"
    doc["expect"]["book"]["bids"][0]["price"] = "250.450"
    path = tmp_path / "numbers.json"
    path.write_text(json.dumps(doc))
    result = run_scenario(load_scenario(path))
    assert result.passed, "\n".join(result.diff)


def test_market_bounds_are_optional() -> None:
    """Rules 11 and 12 in a scenario's market spec: absent or null is unbounded, as in ``MarketSpec``."""
    plain = {"market": "X", "tick_size": "0.01", "lot_size": "0.001"}
    spec = parse_market(plain, choose_units(plain))
    assert (spec.max_qty, spec.max_notional, spec.collar_num, spec.collar_interval_ms) == (None, None, None, 60_000)
    nulls = {**plain, "max_qty": None, "max_notional": None, "collar_pct": None, "collar_interval_s": None}
    assert parse_market(nulls, choose_units(nulls)) == spec
    bounded = {**plain, "max_qty": "2.5", "max_notional": "1000.5", "collar_pct": "12.5", "collar_interval_s": 30}
    spec = parse_market(bounded, choose_units(bounded))
    assert spec.max_qty == 2500  # quantity units (3 decimals)
    assert spec.max_notional == 1000_50000  # price x quantity units (2 + 3 decimals)
    assert (spec.collar_num, spec.collar_den, spec.collar_interval_ms) == (25, 2, 30_000)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"max_notional": "0.000001"}, "market.max_notional"),
        ({"max_qty": "0"}, "max_qty must be at least min_qty"),
        ({"collar_pct": 100}, "collar must be a percentage"),
        ({"collar_pct": 10, "collar_interval_s": "60"}, "collar_interval_s"),
        ({"collar_pct": 10, "collar_interval_s": 0}, "collar interval must be positive"),
    ],
)
def test_market_bounds_errors(extra: dict[str, object], message: str) -> None:
    market = {"market": "X", "tick_size": "0.01", "lot_size": "0.001", **extra}
    with pytest.raises(ScenarioError, match=message):
        parse_market(market, choose_units(market))
