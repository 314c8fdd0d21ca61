"""Differential test: the engine and the naive reference matcher agree on every event."""

from __future__ import annotations

import random

from hypothesis import given

from streams.domain.commands import Command, Side
from streams.domain.market import MarketSpec
from streams.engine import Engine
from tests.unit.engine.conftest import ENGINE_SETTINGS
from tests.unit.engine.reference import Reference
from tests.unit.engine.strategies import SPECS, command_streams, generate


def _run_both(spec: MarketSpec, commands: list[Command]) -> None:
    engine = Engine(spec)
    ref = Reference(spec)
    for n, cmd in enumerate(commands):
        got = engine.apply(cmd)
        want = ref.apply(cmd)
        assert got == want, f"command {n}: {cmd}\nengine:    {got}\nreference: {want}"
        engine.check_invariants()
        for side in Side:
            assert engine.book_orders(side) == ref.book_orders(side), f"book differs after command {n}: {cmd}"
    assert engine.seq == ref.seq
    assert engine.trade_id == ref.trade_id
    assert engine.last_ts == ref.last_ts


@ENGINE_SETTINGS
@given(command_streams(max_size=50))
def test_engine_matches_reference(stream: tuple[MarketSpec, list[Command]]) -> None:
    spec, commands = stream
    _run_both(spec, commands)


def test_engine_matches_reference_on_long_seeded_streams() -> None:
    """Longer, denser streams than Hypothesis draws: 4 markets x 40 seeds x 250 commands."""
    for seed in range(160):
        spec = SPECS[seed % len(SPECS)]
        _run_both(spec, generate(spec, random.Random(seed), 250))
