"""Where each worker starts reading, without the whole topic history (pure planning, thin I/O).

``md.book``: per partition, read backwards from the end in chunks until the latest snapshot
record (part 0) of every market that maps to the partition is found, or the partition's start;
reading then starts at the oldest of those snapshots. A market with no record at all is an empty
book at book_seq 0; one with records but no snapshot left (retention) waits for the next snapshot.

``orders.events``: the same backward reading finds each market's latest ``MarketStateChanged``
(bounded by ``status_scan_records`` per partition: beyond it a market counts as active); live
reading starts at the end. ``md.ticker`` (compacted, latest record per market = its ticker): the
same bounded backward reading finds each market's latest record; reading starts at the oldest of
them (a market without one within the bound is served the gateway's own ticker until its next
record). ``trades`` and ``md.candles``: from ``lookback_ms`` of record time
back (``offsets_for_times``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from connectors.websocket.partitioning import market_partition
from streams.runtime.reader import read_range, topic_partitions, watermarks


@dataclass
class SnapshotSearch:
    """Pure: fed chunks of one partition from the end backwards (each chunk in offset order),
    it keeps the offset of each wanted market's latest snapshot record and says when to stop."""

    wanted: set[str]
    found: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def visit(self, chunk: list[tuple[int, dict[str, Any]]]) -> bool:
        """True when every wanted market has its snapshot (no need to read further back)."""
        for offset, record in reversed(chunk):
            market = record["market"]
            self.seen.add(market)
            if record.get("snapshot") and record.get("part", 0) == 0 and market not in self.found:
                self.found[market] = offset
        return self.wanted <= set(self.found)

    def start(self, end: int) -> int:
        return min(self.found.values(), default=end)


@dataclass
class StateSearch:
    """Pure: the latest MarketStateChanged of each wanted market, fed like :class:`SnapshotSearch`."""

    wanted: set[str]
    found: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # market -> (state, seq, ts)

    def visit(self, chunk: list[tuple[int, dict[str, Any]]]) -> bool:
        for _, record in reversed(chunk):
            name, body = record["body"]
            market = record["market"]
            if name == "xchg.v1.MarketStateChanged" and market not in self.found:
                self.found[market] = (body["state"], record["seq"], record["ts"])
        return self.wanted <= set(self.found)


@dataclass
class LatestSearch:
    """Pure: the offset of each wanted market's latest record, fed like :class:`SnapshotSearch`."""

    wanted: set[str]
    found: dict[str, int] = field(default_factory=dict)

    def visit(self, chunk: list[tuple[int, dict[str, Any]]]) -> bool:
        for offset, record in reversed(chunk):
            market = record["market"]
            if market in self.wanted and market not in self.found:
                self.found[market] = offset
        return self.wanted <= set(self.found)

    def start(self, end: int) -> int:
        return min(self.found.values(), default=end)


def scan_backwards(consumer: Consumer, topic: str, partition: int, low: int, high: int, chunk: int,
                   decode: Callable[[bytes | None], dict[str, Any]],
                   visit: Callable[[list[tuple[int, dict[str, Any]]]], bool], budget: int | None = None) -> None:
    end = high
    read = 0
    while end > low and (budget is None or read < budget):
        start = max(low, end - chunk)
        records = [(m.offset() or 0, decode(m.value())) for m in read_range(consumer, topic, partition, start, end)]
        read += end - start
        if visit(records):
            return
        end = start


@dataclass
class StartPlan:
    """Per (physical topic, partition): the offset to start at and the end offset at start-up."""

    starts: dict[tuple[str, int], int] = field(default_factory=dict)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    empty_markets: set[str] = field(default_factory=set)  # no md.book record at all
    states: dict[str, tuple[str, int, int]] = field(default_factory=dict)


def partitions_markets(markets: Iterable[str], partitions: int) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {p: set() for p in range(partitions)}
    for market in markets:
        out[market_partition(market, partitions)].add(market)
    return out


def plan_book(consumer: Consumer, topic: str, markets: list[str], chunk: int,
              decode: Callable[[bytes | None], dict[str, Any]], plan: StartPlan) -> None:
    parts = topic_partitions(consumer, topic)
    by_partition = partitions_markets(markets, len(parts))
    for p in parts:
        low, high = watermarks(consumer, topic, p)
        search = SnapshotSearch(set(by_partition[p]))
        scan_backwards(consumer, topic, p, low, high, chunk, decode, search.visit)
        plan.starts[(topic, p)] = search.start(high)
        plan.ends[(topic, p)] = high
        plan.empty_markets |= by_partition[p] - search.seen


def plan_states(consumer: Consumer, topic: str, markets: list[str], chunk: int, budget: int,
                decode: Callable[[bytes | None], dict[str, Any]], plan: StartPlan) -> None:
    parts = topic_partitions(consumer, topic)
    by_partition = partitions_markets(markets, len(parts))
    for p in parts:
        low, high = watermarks(consumer, topic, p)
        search = StateSearch(set(by_partition[p]))
        scan_backwards(consumer, topic, p, low, high, chunk, decode, search.visit, budget)
        plan.states.update(search.found)
        plan.starts[(topic, p)] = high
        plan.ends[(topic, p)] = high


def plan_since(consumer: Consumer, topic: str, since_ms: int, plan: StartPlan) -> None:
    parts = topic_partitions(consumer, topic)
    if not parts:
        return
    found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in parts], timeout=30)
    for tp in found:
        low, high = watermarks(consumer, topic, tp.partition)
        plan.starts[(topic, tp.partition)] = high if tp.offset < 0 else max(low, tp.offset)
        plan.ends[(topic, tp.partition)] = high


def plan_latest(consumer: Consumer, topic: str, markets: list[str], chunk: int, budget: int,
                decode: Callable[[bytes | None], dict[str, Any]], plan: StartPlan) -> None:
    """Start each partition at the oldest of its markets' latest records (``md.ticker``)."""
    parts = topic_partitions(consumer, topic)
    by_partition = partitions_markets(markets, len(parts))
    for p in parts:
        low, high = watermarks(consumer, topic, p)
        search = LatestSearch(set(by_partition[p]))
        scan_backwards(consumer, topic, p, low, high, chunk, decode, search.visit, budget)
        plan.starts[(topic, p)] = search.start(high)
        plan.ends[(topic, p)] = high
