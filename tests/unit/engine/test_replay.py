"""``xchg engine replay``: events out as JSON lines, the final hash, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli import app
from streams.domain.events import event_from_dict
from streams.domain.market import to_units
from streams.errors import EXIT_OPERATOR
from streams.offline.scenario import load_scenario, run_commands

REPO_ROOT = Path(__file__).resolve().parents[3]
SCENARIOS = REPO_ROOT / "tests" / "conformance"


def _write_inputs(tmp_path: Path, name: str) -> tuple[Path, Path]:
    doc = json.loads((SCENARIOS / name).read_text())
    spec = tmp_path / "market.json"
    spec.write_text(json.dumps(doc["market"]))
    log = tmp_path / "commands.jsonl"
    log.write_text("".join(json.dumps(c) + "\n" for c in doc["commands"]) + "\n")
    return spec, log


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["engine", "replay", *args])
    return result.exit_code, result.stdout, result.stderr


def test_replay_writes_events_and_prints_hash(tmp_path: Path) -> None:
    spec, log = _write_inputs(tmp_path, "rule05-stp-mixed-sequence.json")
    out = tmp_path / "events.jsonl"
    code, stdout, stderr = _invoke("--market-spec", str(spec), "--input", str(log), "--output", str(out))
    assert code == 0, stdout + stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    scenario = load_scenario(SCENARIOS / "rule05-stp-mixed-sequence.json")
    engine, events = run_commands(scenario.spec, scenario.commands)
    assert summary == {"commands": 7, "events": len(events), "state_hash": engine.state_hash()}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["seq"] for d in lines] == list(range(1, len(events) + 1))
    trade = next(d for d in lines if d["type"] == "trade")
    assert trade == {
        "type": "trade", "seq": trade["seq"], "ts": 1760000000002, "trade_id": 1, "price": "310.00",
        "qty": "0.700", "maker_order_id": "A2", "maker_account": "pat", "taker_order_id": "X1",
        "taker_account": "ora", "taker_side": "buy",
    }  # fmt: skip
    expired = [d for d in lines if d["type"] == "order_expired"]
    assert {d["reason"] for d in expired} == {"stp_maker", "stp_taker", "stp_decrement"}
    # Back to events (amounts to integer units) equals what the engine emitted.
    for d, event in zip(lines, events, strict=True):
        for key, decimals in (("price", 2), ("qty", 3), ("remaining", 3)):
            if key in d:
                d[key] = to_units(d[key], decimals)
        assert event_from_dict(d) == event


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"cmd": "place", "order_id": "x"\n', "commands.jsonl:1: invalid JSON"),
        ('\n{"cmd": "cancel", "order_id": "a", "account": "b", "ts": 1}\n{oops}\n', "commands.jsonl:3: invalid JSON"),
        ('{"cmd": "teleport", "ts": 1}\n', "commands.jsonl:1: unknown command type 'teleport'"),
        ('{"cmd": "cancel", "order_id": "a", "ts": 1}\n', "commands.jsonl:1: missing 'account'"),
        ('{"cmd": "place", "order_id": "a", "account": "b", "side": "up", "type": "limit", '
         '"price": "1", "qty": "1", "ts": 1}\n', "unknown Side 'up'"),
    ],
)  # fmt: skip
def test_replay_input_errors_are_one_line(tmp_path: Path, content: str, message: str) -> None:
    spec, _ = _write_inputs(tmp_path, "rule01-price-time-priority.json")
    log = tmp_path / "commands.jsonl"
    log.write_text(content)
    code, stdout, stderr = _invoke(
        "--market-spec", str(spec), "--input", str(log), "--output", str(tmp_path / "o")
    )
    assert code == EXIT_OPERATOR
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert stderr.startswith("error: ") and message in stderr
    assert not (tmp_path / "o").exists()


def test_replay_missing_files(tmp_path: Path) -> None:
    spec, log = _write_inputs(tmp_path, "rule01-price-time-priority.json")
    code, _, stderr = _invoke(
        "--market-spec", str(tmp_path / "nope.json"), "--input", str(log), "--output", "x"
    )
    assert code == EXIT_OPERATOR and stderr.strip() == f"error: market-spec file not found: {tmp_path / 'nope.json'}"
    code, _, stderr = _invoke(
        "--market-spec", str(spec), "--input", str(tmp_path / "in.jsonl"), "--output", "x"
    )
    assert code == EXIT_OPERATOR and stderr.strip() == f"error: input file not found: {tmp_path / 'in.jsonl'}"


def test_replay_bad_market_spec(tmp_path: Path) -> None:
    _, log = _write_inputs(tmp_path, "rule01-price-time-priority.json")
    spec = tmp_path / "market.json"
    spec.write_text('{"market": "X",\n "tick_size": }')
    code, _, stderr = _invoke(
        "--market-spec", str(spec), "--input", str(log), "--output", str(tmp_path / "o")
    )
    assert code == EXIT_OPERATOR and "market.json:2: invalid JSON" in stderr
    spec.write_text('{"market": "X", "tick_size": "0.01"}')
    code, _, stderr = _invoke(
        "--market-spec", str(spec), "--input", str(log), "--output", str(tmp_path / "o")
    )
    assert code == EXIT_OPERATOR and "missing 'lot_size'" in stderr


def test_replay_market_spec_with_bounds(tmp_path: Path) -> None:
    """A market spec with max_qty, max_notional and a collar replays to the scenario's trades."""
    for name in ("rule11-market-order-qty-bound.json", "rule12-market-order-stops-at-collar.json"):
        spec, log = _write_inputs(tmp_path, name)
        out = tmp_path / "events.jsonl"
        code, stdout, _ = _invoke("--market-spec", str(spec), "--input", str(log), "--output", str(out))
        assert code == 0, stdout
        scenario = load_scenario(SCENARIOS / name)
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        trades = [(d["maker_order_id"], d["taker_order_id"]) for d in lines if d["type"] == "trade"]
        assert trades == [(t["maker_order_id"], t["taker_order_id"]) for t in scenario.expect.trades]
        rejects = [(d["order_id"], d["reason"]) for d in lines if d["type"] == "order_rejected"]
        assert rejects == [(r["order_id"], r["reason"]) for r in scenario.expect.rejects]
