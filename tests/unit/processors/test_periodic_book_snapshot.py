"""The engine's periodic md.book snapshot (``MatchingConfig.book_snapshot_every``): after every N
deltas of a market its next record is a full snapshot, chained to the previous delta; counted,
so the same batches publish the same records; every consumer's book stays the engine's."""

from __future__ import annotations

import itertools
from typing import Any

from connectors.websocket.book import MarketBook, Outcome
from streams.domain.commands import Side
from streams.loadgen import OrderFlow
from streams.markets import MarketRegistry
from streams.processors.matching import MatchingConfig, MatchingProcessor, _Owned
from streams.runtime.namespace import DEFAULT
from streams.runtime.partition import PartitionState
from streams.runtime.records import command_to_record
from streams.runtime.sequence import BookChain
from streams.serde.codec import Codec
from streams.serde.topics import MD_BOOK, ORDERS_COMMANDS
from streams.settings import load_settings

MARKETS = ("BTC-USD", "ETH-USD")


class Recorder:
    """Stands in for the transactional producer: keeps what was produced."""

    def __init__(self) -> None:
        self.values: list[tuple[str, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **_: Any) -> None:
        self.values.append((topic, value))


def run(every: int, batches: int = 40, per_batch: int = 7) -> tuple[list[dict[str, Any]], PartitionState]:
    registry = MarketRegistry.load(load_settings().markets_file)
    codec = Codec()
    processor = MatchingProcessor.__new__(MatchingProcessor)  # no Kafka client: _publish_book only
    processor.config = MatchingConfig(bootstrap="unused:1", book_snapshot_every=every)
    processor.codec, processor.ns = codec, DEFAULT
    recorder = Recorder()
    owned = _Owned(PartitionState(0, registry, codec), recorder, None)  # type: ignore[arg-type]
    flow = OrderFlow([registry.get(m).spec() for m in MARKETS], seed=7)
    offset = 0
    for _ in range(batches):
        touched = set()
        for _ in range(per_batch):
            market, command = flow.next()
            value = codec.encode(ORDERS_COMMANDS, command_to_record(market, command))
            owned.state.process(offset, value, 1_767_225_600_000 + offset)
            touched.add(market)
            offset += 1
        processor._publish_book(recorder, 0, owned, touched, offset - 1)  # type: ignore[arg-type]
    records = [codec.decode(MD_BOOK, value) for topic, value in recorder.values if topic.endswith(MD_BOOK)]
    return records, owned.state


def test_a_snapshot_follows_every_n_deltas_of_a_market_and_keeps_the_chain() -> None:
    records, state = run(every=3)
    chain = BookChain()
    for market in MARKETS:
        mine = [r for r in records if r["market"] == market]
        kinds = [r["snapshot"] for r in mine]
        assert kinds[0] and mine[0]["prev_book_seq"] == 0  # the first record (as after recovery)
        assert all(kinds[i] == (i % 4 == 0) for i in range(len(kinds))), kinds
        for before, after in itertools.pairwise(mine):
            assert after["prev_book_seq"] == before["book_seq"]  # periodic snapshots chain too
    for r in records:
        chain.observe(r["market"], r["book_seq"], r["prev_book_seq"], r["snapshot"], r["part"], r["parts"])
    assert chain.breaks == [] and chain.snapshots > 2 * len(MARKETS)
    # A consumer from the start and one that starts at the last snapshot both hold the engine's book.
    for market in MARKETS:
        mine = [r for r in records if r["market"] == market]
        last_snapshot = max(i for i, r in enumerate(mine) if r["snapshot"])
        engine = state.engines[market]
        for start in (0, last_snapshot):
            book = MarketBook(market)
            outcomes = [book.apply(r)[0] for r in mine[start:]]
            assert set(outcomes) == {Outcome.APPLIED}
            assert book.book_seq == engine.seq
            assert book.bids.best_first() == list(engine.book_levels(Side.BUY))
            assert book.asks.best_first() == list(engine.book_levels(Side.SELL))


def test_the_same_batches_publish_the_same_records() -> None:
    assert run(every=5)[0] == run(every=5)[0]


def test_a_large_interval_publishes_only_the_first_snapshot() -> None:
    records, _ = run(every=10_000)
    assert sum(r["snapshot"] for r in records) == len(MARKETS)
