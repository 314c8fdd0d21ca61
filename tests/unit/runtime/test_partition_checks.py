"""Pure checks of one partition's state (streams/runtime/partition.py, snapshotter.py): the
wildcard market, snapshots refused when they disagree with their hashes, hash checkpoints."""

from __future__ import annotations

import zlib

import pytest

from streams.domain.commands import MarketState, SetState
from streams.loadgen import OrderFlow, encode_flow
from streams.markets import MarketRegistry
from streams.runtime.failures import StateMismatch
from streams.runtime.partition import PartitionState
from streams.runtime.records import command_to_record
from streams.runtime.snapshotter import encode_hashes, encode_snapshot
from streams.serde.codec import Codec
from streams.serde.topics import ENGINE_HASHES, ENGINE_SNAPSHOTS, ORDERS_COMMANDS
from streams.settings import load_settings

T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def registry() -> MarketRegistry:
    return MarketRegistry.load(load_settings().markets_file)


def busy_state(registry: MarketRegistry, codec: Codec, commands: int = 1500) -> PartitionState:
    state = PartitionState(0, registry, codec)
    flow = OrderFlow([m.spec() for m in registry], seed=3)
    for offset, (_, _, value) in enumerate(encode_flow(flow, codec, commands)):
        state.process(offset, value, T0 + offset)
    return state


def test_a_wildcard_halt_is_dead_lettered_with_its_own_reason(registry: MarketRegistry) -> None:
    codec = Codec()
    state = PartitionState(0, registry, codec)
    value = codec.encode(ORDERS_COMMANDS, command_to_record("*", SetState("admin-1", 0, MarketState.HALTED)))
    result = state.process(0, value, T0)
    assert result.dead is not None and result.dead.reason == "market_wildcard"
    assert "--all" in result.dead.detail
    assert state.engines == {}  # no market changed state, none was created
    unknown = codec.encode(ORDERS_COMMANDS, command_to_record("NOPE-USD", SetState("admin-2", 0, MarketState.HALTED)))
    assert state.process(1, unknown, T0).dead.reason == "unknown_market"  # type: ignore[union-attr]


def test_a_snapshot_restores_to_the_same_state(registry: MarketRegistry) -> None:
    codec = Codec()
    state = busy_state(registry, codec)
    record = codec.decode(ENGINE_SNAPSHOTS, encode_snapshot(state, codec).snapshot)
    assert PartitionState.from_snapshot(record, registry, codec).state_hash() == state.state_hash()


def test_a_snapshot_whose_state_was_altered_is_refused(registry: MarketRegistry) -> None:
    codec = Codec()
    state = busy_state(registry, codec)
    record = codec.decode(ENGINE_SNAPSHOTS, encode_snapshot(state, codec).snapshot)
    entry = record["markets"][0]
    raw = zlib.decompress(entry["state"])
    entry["state"] = zlib.compress(raw.replace(b'"seq":', b'"seq": ', 1), 1)
    with pytest.raises(StateMismatch) as refused:
        PartitionState.from_snapshot(record, registry, codec)
    message = str(refused.value)
    assert f"partition 0 at offset {state.next_offset}" in message
    assert entry["state_hash"] in message and "recomputed" in message


def test_a_snapshot_whose_counters_were_altered_is_refused(registry: MarketRegistry) -> None:
    codec = Codec()
    state = busy_state(registry, codec)
    record = codec.decode(ENGINE_SNAPSHOTS, encode_snapshot(state, codec).snapshot)
    record["commands"] += 1  # every market state intact, the partition's counters not
    with pytest.raises(StateMismatch, match=f"recorded hash {record['state_hash']}, recomputed"):
        PartitionState.from_snapshot(record, registry, codec)


def test_a_snapshot_that_does_not_decompress_is_refused(registry: MarketRegistry) -> None:
    codec = Codec()
    state = busy_state(registry, codec)
    record = codec.decode(ENGINE_SNAPSHOTS, encode_snapshot(state, codec).snapshot)
    record["markets"][0]["state"] = b"not zlib"
    with pytest.raises(StateMismatch, match="does not decompress"):
        PartitionState.from_snapshot(record, registry, codec)


def test_a_hash_checkpoint_carries_the_snapshots_hashes_without_a_snapshot(registry: MarketRegistry) -> None:
    codec = Codec()
    state = busy_state(registry, codec)
    checkpoint = encode_hashes(state, codec)
    snapshot = encode_snapshot(state, codec)
    assert checkpoint.snapshot is None and checkpoint.next_offset == snapshot.next_offset
    assert checkpoint.hashes == snapshot.hashes
    decoded = [codec.decode(ENGINE_HASHES, value) for _, value in checkpoint.hashes]
    assert {h["market"] for h in decoded} == set(state.engines)
    assert all(h["input_offset"] == state.next_offset - 1 for h in decoded)
