"""Crash, zombie, rebalance and malformed-input tests of the matching processor on the real broker.

After each scenario the committed outputs must equal what one uninterrupted engine produces from
the same input (event for event), with gap-free, duplicate-free sequences, one outcome per
command, and the live engine's recorded state hashes equal to an offline replay's.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from streams.domain.commands import Cancel
from streams.markets import MarketRegistry
from streams.runtime.clients import make_producer
from streams.runtime.reader import read_range, standalone_consumer, watermarks
from streams.runtime.records import command_to_record
from streams.runtime.recovery import recover
from streams.runtime.verify import check_outcomes, check_streams
from streams.serde.codec import Codec
from streams.serde.topics import DLQ_ORDERS_COMMANDS, ORDERS_COMMANDS
from streams.settings import load_settings
from tests.crash.conftest import Load
from tests.pipeline import (
    EngineProcess,
    committed_events,
    committed_total,
    input_total,
    offline_events,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.crash]
PARTITIONS = 4


def assert_exactly_once(bootstrap: str, codec: Codec) -> None:
    """The committed outputs are exactly those of an uninterrupted offline run."""
    streams = check_streams(bootstrap, codec)
    assert streams.events.gaps == [] and streams.events.duplicates == 0
    assert streams.trades.gaps == [] and streams.trades.duplicates == 0
    assert streams.book.breaks == []
    assert streams.trade_ids == streams.trade_ids_in_events
    outcomes = check_outcomes(bootstrap, codec)
    assert outcomes.missing == [] and outcomes.duplicated == []
    registry = MarketRegistry.load(load_settings().markets_file)
    for partition in range(PARTITIONS):
        expected, offline_state = offline_events(bootstrap, partition, codec)
        actual = committed_events(bootstrap, partition, codec)
        first = next((i for i, (a, e) in enumerate(zip(actual, expected, strict=False)) if a != e), None)
        assert first is None and len(actual) == len(expected), (
            f"partition {partition}: {len(actual)} committed events, {len(expected)} expected; first "
            f"difference at {first}: {actual[first] if first is not None else None} != "
            f"{expected[first] if first is not None else None}")
        # The live engine's recorded hashes (including the final one) match the offline replay.
        state, report = recover(bootstrap, registry, codec, partition, None, use_snapshot=False, strict=False)
        assert report.mismatches == []
        if offline_state.commands:
            assert report.hashes_checked > 0
        assert state.state_hash() == offline_state.state_hash()


def _progress(bootstrap: str, group: str, before: int, engine: EngineProcess) -> int:
    """The committed total once it passed ``before`` (0 = not yet); fails if the engine died."""
    assert engine.alive(), f"engine exited: see {engine.log_path}"
    total = committed_total(bootstrap, group)
    return total if total > before else 0


def drain(engine: EngineProcess, bootstrap: str, group: str) -> None:
    engine.wait_assigned()
    total = input_total(bootstrap)
    wait_for(lambda: committed_total(bootstrap, group) >= total, 120, "the engine to consume all input")
    assert engine.stop() == 0


def test_sigkill_at_random_moments(clean_topics: str, codec: Codec, log_dir: Path, unique: str) -> None:
    bootstrap, group = clean_topics, f"crash-{unique}"
    rng = random.Random(unique)
    load = Load(bootstrap, count=40_000, rate=2000, seed=11).start()
    engine = EngineProcess(bootstrap, group, "crash-1", log_dir,
                           args=["--snapshot-every", "3000", "--hash-every", "1000", "--batch-size", "500"])
    committed = 0
    for _ in range(20):
        engine.start()
        # Kill only once this incarnation has committed something: every kill interrupts real work.
        committed = wait_for(lambda c=committed: _progress(bootstrap, group, c, engine), 60,
                             "the restarted engine to commit")
        assert engine.alive(), f"engine exited: see {engine.log_path}"
        time.sleep(rng.uniform(0.0, 0.8))  # a random kill moment, not a synchronisation
        engine.kill()
    load.join()
    engine.start()
    drain(engine, bootstrap, group)
    assert_exactly_once(bootstrap, codec)


@pytest.mark.parametrize("point", ["after-produce:3", "during-snapshot:1"])
def test_named_crash_points(point: str, clean_topics: str, codec: Codec, log_dir: Path, unique: str) -> None:
    bootstrap, group = clean_topics, f"crashpt-{unique}"
    load = Load(bootstrap, count=12_000, rate=None, seed=12).start()
    load.join()
    engine = EngineProcess(bootstrap, group, "crashpt-1", log_dir,
                           args=["--snapshot-every", "2000", "--hash-every", "1000", "--batch-size", "500"])
    for _ in range(3):
        engine.start({"XCHG_CRASH_POINT": point})
        assert engine.proc is not None
        assert engine.proc.wait(120) == -signal.SIGKILL, f"crash point {point} not reached: {engine.log_path}"
    engine.start()
    drain(engine, bootstrap, group)
    assert_exactly_once(bootstrap, codec)


def _members(bootstrap: str, group: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(30)
    return len(description.members)


def test_zombie_is_fenced(clean_topics: str, codec: Codec, log_dir: Path, unique: str) -> None:
    bootstrap, group = clean_topics, f"zombie-{unique}"
    load = Load(bootstrap, count=30_000, rate=2000, seed=13).start()
    args = ["--snapshot-every", "3000", "--hash-every", "1000", "--batch-size", "500"]
    a = EngineProcess(bootstrap, group, "zombie-a", log_dir, args=args).start()
    b = EngineProcess(bootstrap, group, "zombie-b", log_dir, args=args).start()
    wait_for(lambda: _members(bootstrap, group) == 2, 60, "both instances to join")
    before = committed_total(bootstrap, group)
    wait_for(lambda: committed_total(bootstrap, group) > before + 2000, 60, "progress with two instances")
    a.signal(signal.SIGSTOP)
    # The group drops the paused member after its session timeout; b takes every partition.
    wait_for(lambda: _members(bootstrap, group) == 1, 60, "the paused member to leave the group")
    progress = committed_total(bootstrap, group)
    wait_for(lambda: committed_total(bootstrap, group) > progress + 1000, 60, "b to process a's partitions")
    a.signal(signal.SIGCONT)
    load.join()
    total = input_total(bootstrap)
    wait_for(lambda: committed_total(bootstrap, group) >= total, 120, "all input consumed")
    a.stop()
    b.stop()
    assert_exactly_once(bootstrap, codec)


def test_rebalance_under_load(clean_topics: str, codec: Codec, log_dir: Path, unique: str) -> None:
    bootstrap, group = clean_topics, f"rebalance-{unique}"
    load = Load(bootstrap, count=30_000, rate=2500, seed=14).start()
    args = ["--snapshot-every", "3000", "--hash-every", "1000", "--batch-size", "500"]
    a = EngineProcess(bootstrap, group, "rebal-a", log_dir, args=args).start()
    wait_for(lambda: committed_total(bootstrap, group) > 2000, 60, "a to make progress")
    b = EngineProcess(bootstrap, group, "rebal-b", log_dir, args=args).start()
    wait_for(lambda: _members(bootstrap, group) == 2, 60, "b to join")
    progress = committed_total(bootstrap, group)
    wait_for(lambda: committed_total(bootstrap, group) > progress + 2000, 60, "progress with two instances")
    assert a.stop() == 0
    load.join()
    total = input_total(bootstrap)
    wait_for(lambda: committed_total(bootstrap, group) >= total, 120, "b to consume everything")
    assert b.stop() == 0
    assert_exactly_once(bootstrap, codec)


def test_malformed_input_goes_to_dead_letters(clean_topics: str, codec: Codec, log_dir: Path,
                                              unique: str) -> None:
    bootstrap, group = clean_topics, f"dlq-{unique}"
    producer = make_producer(bootstrap)
    garbage = [b"", b"\x00\x01garbage", b"\xc3\x01" + b"\x00" * 8 + b"body", b"{json: 1}"]
    valid = Load(bootstrap, count=2000, rate=None, seed=15)
    sent_bad = 0
    for i in range(2000):
        market, command = valid.flow.next()
        producer.produce(ORDERS_COMMANDS, codec.encode(ORDERS_COMMANDS, command_to_record(market, command)),
                         market.encode())
        if i % 250 == 0:
            producer.produce(ORDERS_COMMANDS, garbage[sent_bad % len(garbage)], market.encode())
            sent_bad += 1
    # A well-formed command for a market the registry does not know.
    producer.produce(ORDERS_COMMANDS, codec.encode(ORDERS_COMMANDS, command_to_record("NOPE-USD", Cancel("x", 0, "o", "a"))),
                     b"NOPE-USD")
    sent_bad += 1
    producer.flush(30)
    engine = EngineProcess(bootstrap, group, "dlq-1", log_dir).start()
    drain(engine, bootstrap, group)
    outcomes = check_outcomes(bootstrap, codec)
    assert outcomes.dead_letters == sent_bad
    assert outcomes.missing == [] and outcomes.duplicated == []
    assert outcomes.commands == 2000 + sent_bad
    consumer = standalone_consumer(bootstrap)
    reasons = set()
    for partition in range(PARTITIONS):
        low, high = watermarks(consumer, DLQ_ORDERS_COMMANDS, partition)
        for message in read_range(consumer, DLQ_ORDERS_COMMANDS, partition, low, high):
            headers = dict(message.headers() or [])
            assert headers["xchg.source"].startswith(ORDERS_COMMANDS.encode())
            reasons.add(headers["xchg.error.reason"].decode())
    consumer.close()
    assert {"empty", "unknown_framing", "unknown_fingerprint", "unknown_market"} <= reasons
    assert_exactly_once(bootstrap, codec)
