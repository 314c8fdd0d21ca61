"""Snapshots: canonical bytes, restore equivalence, hash independence, and refusal of bad input."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from streams.domain.market import MarketSpec
from streams.engine import Engine, SnapshotError
from tests.unit.engine.strategies import SPECS, generate

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("seed", range(12))
def test_restore_mid_stream_continues_identically(seed: int) -> None:
    spec = SPECS[seed % len(SPECS)]
    commands = generate(spec, random.Random(seed), 300)
    cut = random.Random(-seed).randrange(len(commands))
    straight = Engine(spec)
    for cmd in commands[:cut]:
        straight.apply(cmd)
    data = straight.snapshot()
    resumed = Engine.restore(spec, data)
    assert resumed.snapshot() == data
    assert (resumed.seq, resumed.trade_id, resumed.last_ts) == (
        straight.seq,
        straight.trade_id,
        straight.last_ts,
    )
    for cmd in commands[cut:]:
        assert resumed.apply(cmd) == straight.apply(cmd)
        assert resumed.state_hash() == straight.state_hash()
    resumed.check_invariants()


def test_snapshot_is_canonical_json() -> None:
    spec = SPECS[1]
    engine = Engine(spec)
    for cmd in generate(spec, random.Random(7), 200):
        engine.apply(cmd)
    data = engine.snapshot()
    doc = json.loads(data)
    assert data == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert doc["used_order_ids"] == sorted(doc["used_order_ids"])
    bid_prices = [level[0] for level in doc["bids"]]
    ask_prices = [level[0] for level in doc["asks"]]
    assert bid_prices == sorted(bid_prices, reverse=True) and ask_prices == sorted(ask_prices)
    assert bid_prices and ask_prices
    assert "." not in data.decode() or all(not isinstance(v, float) for v in _numbers(doc))


def _numbers(obj: object) -> list[object]:
    if isinstance(obj, dict):
        return [n for v in obj.values() for n in _numbers(v)]
    if isinstance(obj, list):
        return [n for v in obj for n in _numbers(v)]
    return [obj] if isinstance(obj, int | float) and not isinstance(obj, bool) else []


def test_hash_ignores_insertion_order_of_unrelated_content() -> None:
    spec = SPECS[0]
    engine = Engine(spec)
    for cmd in generate(spec, random.Random(3), 300):
        engine.apply(cmd)
    other = Engine.restore(spec, engine.snapshot())
    # Rebuild the id set and the order index in reverse insertion order: same state, same hash.
    other._used = set(reversed(sorted(other._used)))
    other._orders = dict(reversed(list(other._orders.items())))
    other._bids.touched = {1, 2, 3}  # pending book changes are not state
    assert other.state_hash() == engine.state_hash()


def test_hash_is_the_same_in_another_process() -> None:
    script = (
        "import random\n"
        "from streams.engine import Engine\n"
        "from tests.unit.engine.strategies import SPECS, generate\n"
        "e = Engine(SPECS[2])\n"
        "for c in generate(SPECS[2], random.Random(11), 300): e.apply(c)\n"
        "print(e.state_hash())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    engine = Engine(SPECS[2])
    for cmd in generate(SPECS[2], random.Random(11), 300):
        engine.apply(cmd)
    assert out.stdout.strip() == engine.state_hash()


def test_restore_refuses_bad_snapshots() -> None:
    spec = SPECS[0]
    engine = Engine(spec)
    for cmd in generate(spec, random.Random(5), 50):
        engine.apply(cmd)
    data = engine.snapshot()
    with pytest.raises(SnapshotError, match="market spec"):
        Engine.restore(MarketSpec("OTHER", tick=1, lot=1, min_qty=1), data)
    with pytest.raises(SnapshotError, match="not canonical JSON"):
        Engine.restore(spec, b"\xff not json")
    doc = json.loads(data)
    doc["format"] = 99
    with pytest.raises(SnapshotError, match="format"):
        Engine.restore(spec, json.dumps(doc).encode())
    with pytest.raises(SnapshotError, match="canonical form"):
        Engine.restore(spec, json.dumps(json.loads(data), indent=2, sort_keys=True).encode())
