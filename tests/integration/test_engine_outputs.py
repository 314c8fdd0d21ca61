"""The engine stops once, naming partition, offset and command id, when a command's outputs
cannot be encoded, instead of crash-looping or stalling the partition (on the real broker; the
registry's bounds make this unreachable, so a planted engine without them stands in)."""

from __future__ import annotations

import pytest

from streams.domain.commands import OrderType, Place, Side
from streams.engine import matcher
from streams.markets import MarketRegistry
from streams.processors.matching import MatchingConfig, MatchingProcessor
from streams.runtime.clients import make_producer
from streams.runtime.failures import OutputRefused
from streams.runtime.records import command_to_record
from streams.serde.codec import Codec
from streams.serde.topics import ORDERS_COMMANDS
from streams.settings import load_settings
from tests.pipeline import fresh_namespace

pytestmark = pytest.mark.integration


def test_outputs_that_cannot_be_encoded_stop_the_engine_once(kafka_bootstrap: str, unique: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    unbounded = matcher.Engine.__init__

    def without_bounds(self: matcher.Engine, spec: object) -> None:
        unbounded(self, spec)  # type: ignore[arg-type]
        self._max_qty = self._max_notional = matcher._UNBOUNDED  # the planted fault

    monkeypatch.setattr(matcher.Engine, "__init__", without_bounds)
    ns = fresh_namespace(kafka_bootstrap, f"out-{unique}")
    codec = Codec()
    producer = make_producer(kafka_bootstrap)
    huge = 9_223_372_036_854_775_800  # two resting sells: a level total beyond a long
    for i in range(2):
        cmd = Place(f"hostile-{i}", 0, f"h{i}", "x", Side.SELL, OrderType.LIMIT, 10**12, huge)
        producer.produce(ns(ORDERS_COMMANDS), codec.encode(ORDERS_COMMANDS, command_to_record("BTC-USD", cmd)),
                         b"BTC-USD")
    assert producer.flush(30) == 0
    processor = MatchingProcessor(MatchingConfig(
        bootstrap=kafka_bootstrap, group_id=f"out-{unique}", instance_id="out", transactional_prefix=f"out-{unique}",
        idle_exit_s=10.0, batch_size=1, namespace=ns), MarketRegistry.load(load_settings().markets_file), codec)
    with pytest.raises(OutputRefused, match=r"partition \d+: the md.book delta of BTC-USD up to the command at offset 1"):
        processor.run()
