"""Recovery, which is also start-up: load the latest snapshot, replay, verify, hand over.

For input partition *p*:
1. read the newest ``engine.snapshots`` record of *p* (snapshots are written to partition *p*
   inside the same transaction as the outputs and input offsets of the batch they end, so the
   snapshot's ``next_offset`` never passes the committed offset);
2. restore every engine and check the recorded hashes;
3. replay ``orders.commands[p]`` from the snapshot's ``next_offset`` up to the target offset (the
   group's committed offset at start-up) through ``PartitionState.process``, emitting nothing;
   wherever ``engine.hashes`` recorded a hash at a replayed offset, the recomputed hash must match;
4. return the state; the live loop resumes consuming at the target offset.

``xchg verify replay`` runs the same function without a snapshot, over the whole retained log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer

from streams.markets import MarketRegistry
from streams.runtime.failures import RecoveryError, StateMismatch
from streams.runtime.namespace import Namespace
from streams.runtime.partition import PartitionState
from streams.runtime.reader import read_range, standalone_consumer, watermarks
from streams.serde.codec import Codec, DecodeError
from streams.serde.topics import ENGINE_HASHES, ENGINE_SNAPSHOTS, ORDERS_COMMANDS


@dataclass
class RecoveryReport:
    partition: int
    snapshot_offset: int | None
    target_offset: int
    replayed: int = 0
    hashes_checked: int = 0
    seconds: float = 0.0
    mismatches: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecordedHash:
    market: str
    seq: int
    input_offset: int
    state_hash: str


def latest_snapshot(consumer: Consumer, codec: Codec, partition: int, ns: Namespace,
                    max_offset: int) -> tuple[dict[str, Any], int] | None:
    """Newest snapshot of ``partition`` with ``next_offset <= max_offset``, and its log time.

    Snapshots past ``max_offset`` are skipped: they cannot come from this consumer group (a
    snapshot commits with the input offsets it reflects), but the engine is deterministic, so a
    snapshot any group took at an offset below the target is as good as our own."""
    topic = ns(ENGINE_SNAPSHOTS)
    low, high = watermarks(consumer, topic, partition)
    window = 4
    end = high
    while end > low:
        start = max(low, end - window)
        found = None
        for message in read_range(consumer, topic, partition, start, end):
            try:
                record = codec.decode(ENGINE_SNAPSHOTS, message.value())
            except DecodeError:
                continue
            if record["partition"] == partition and record["next_offset"] <= max_offset:
                found = (record, message.timestamp()[1])
        if found is not None:
            return found
        end = start
        window *= 4
    return None


def recorded_hashes(consumer: Consumer, codec: Codec, partition: int, ns: Namespace,
                    since_ms: int | None) -> list[RecordedHash]:
    """Hashes the live engine published for ``partition`` (from ``since_ms`` when given)."""
    topic = ns(ENGINE_HASHES)
    low, high = watermarks(consumer, topic, partition)
    start = low
    if since_ms is not None:
        from confluent_kafka import TopicPartition

        found = consumer.offsets_for_times([TopicPartition(topic, partition, since_ms)], timeout=30)
        start = found[0].offset if found[0].offset >= 0 else high
    out = []
    for message in read_range(consumer, topic, partition, start, high):
        record = codec.decode(ENGINE_HASHES, message.value())
        out.append(RecordedHash(record["market"], record["seq"], record["input_offset"], record["state_hash"]))
    return out


def recover(
    bootstrap: str,
    registry: MarketRegistry,
    codec: Codec,
    partition: int,
    ns: Namespace,
    target_offset: int | None,
    use_snapshot: bool = True,
    strict: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[PartitionState, RecoveryReport]:
    """Rebuild ``partition``'s state up to ``target_offset`` (None: the end of the log)."""
    started = time.monotonic()
    consumer = standalone_consumer(bootstrap)
    try:
        low, high = watermarks(consumer, ns(ORDERS_COMMANDS), partition)
        target = high if target_offset is None or target_offset < 0 else target_offset
        snapshot = latest_snapshot(consumer, codec, partition, ns, target) if use_snapshot else None
        if snapshot is not None:
            record, snapshot_ts = snapshot
            state = PartitionState.from_snapshot(record, registry, codec)
            since: int | None = snapshot_ts
        else:
            state = PartitionState(partition, registry, codec)
            state.next_offset = 0
            since = None
        if state.next_offset < low and target > state.next_offset:
            if state.next_offset == 0 and snapshot is None and target_offset is None:
                state.next_offset = low  # an offline replay of what retention kept
            else:
                raise RecoveryError(
                    f"partition {partition}: recovery needs orders.commands from offset {state.next_offset}, "
                    f"but retention deleted everything before {low}; restore a newer snapshot"
                )
        report = RecoveryReport(partition, record["next_offset"] if snapshot else None, target)
        hashes: dict[int, list[RecordedHash]] = {}
        for recorded in recorded_hashes(consumer, codec, partition, ns, since):
            if state.next_offset <= recorded.input_offset < target:
                hashes.setdefault(recorded.input_offset, []).append(recorded)
        total = target - state.next_offset
        for message in read_range(consumer, ns(ORDERS_COMMANDS), partition, state.next_offset, target):
            offset: int = message.offset()  # type: ignore[assignment]  # never None for a consumed record
            state.process(offset, message.value(), message.timestamp()[1])
            report.replayed += 1
            for recorded in hashes.get(offset, ()):
                actual = state.engine(recorded.market).state_hash()
                report.hashes_checked += 1
                if actual != recorded.state_hash:
                    detail = (f"partition {partition} market {recorded.market} at offset {offset} "
                              f"(seq {recorded.seq}): live {recorded.state_hash[:12]}, replay {actual[:12]}")
                    if strict:
                        raise StateMismatch(detail)
                    report.mismatches.append(detail)
            if progress is not None and report.replayed % 50000 == 0:
                progress(report.replayed, total)
        state.next_offset = max(state.next_offset, target)
        report.seconds = time.monotonic() - started
        return state, report
    finally:
        consumer.close()
