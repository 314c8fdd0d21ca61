"""The shared conformance scenarios, run through the same code as ``xchg engine conformance``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli import app
from streams.offline.scenario import load_scenario, run_scenario, scenario_files

REPO_ROOT = Path(__file__).resolve().parents[3]
SCENARIOS = REPO_ROOT / ".." / "shared" / "conformance" / "scenarios"
FILES = scenario_files([SCENARIOS]) if SCENARIOS.is_dir() else []


def test_scenarios_are_present() -> None:
    assert len(FILES) >= 14, f"expected the shared conformance scenarios in {SCENARIOS.resolve()}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path) -> None:
    result = run_scenario(load_scenario(path))
    assert result.passed, "\n".join(result.diff)


def test_cli_passes_all_scenarios() -> None:
    result = CliRunner().invoke(app, ["engine", "conformance", str(SCENARIOS)])
    assert result.exit_code == 0, result.output
    assert f"{len(FILES)} passed, 0 failed" in result.output


def test_cli_broken_scenario_fails_with_diff(tmp_path: Path) -> None:
    doc = json.loads((SCENARIOS / "01-price-time-priority.json").read_text())
    doc["expect"]["trades"][0]["qty"] = "2"  # wrong on purpose
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    shutil.copy(SCENARIOS / "02-partial-fill-rests.json", tmp_path / "ok.json")
    result = CliRunner().invoke(app, ["engine", "conformance", str(tmp_path)])
    assert result.exit_code == 1
    assert "FAIL 01-price-time-priority" in result.output
    assert "PASS 02-partial-fill-rests" in result.output
    assert '-   "qty": "2"' in result.output and '+   "qty": "1"' in result.output
    assert "1 passed, 1 failed" in result.output


def test_cli_unreadable_scenario_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",\n "market": ')
    result = CliRunner().invoke(app, ["engine", "conformance", str(bad)])
    assert result.exit_code == 1
    assert "invalid JSON at line 2" in result.output


def test_numbers_compare_as_numbers(tmp_path: Path) -> None:
    """ "1" equals "1.000" and "100" equals "100.00" in expectations."""
    doc = json.loads((SCENARIOS / "02-partial-fill-rests.json").read_text())
    doc["expect"]["trades"][0]["qty"] = "1.000000"
    doc["expect"]["book"]["bids"][0]["price"] = "100.550"
    path = tmp_path / "numbers.json"
    path.write_text(json.dumps(doc))
    result = run_scenario(load_scenario(path))
    assert result.passed, "\n".join(result.diff)
