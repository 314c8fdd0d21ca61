"""Crash, zombie, rebalance and malformed-input tests of the matching processor on the real broker.

Each test runs real ``xchg engine run`` processes in a namespace of its own (fresh topics). After
each scenario the committed outputs must equal what one uninterrupted engine produces from the
same input (event for event), with gap-free, duplicate-free sequences, one outcome per command,
and the live engine's recorded state hashes equal to an offline replay's.
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
from tests.crash.conftest import Load, Stage
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
ENGINE_ARGS = ["--snapshot-every", "1500", "--batch-size", "500"]


def assert_exactly_once(stage: Stage, codec: Codec) -> None:
    """The committed outputs are exactly those of an uninterrupted offline run."""
    bootstrap, ns = stage.bootstrap, stage.ns
    streams = check_streams(bootstrap, codec, ns)
    assert streams.events.gaps == [] and streams.events.duplicates == 0
    assert streams.trades.gaps == [] and streams.trades.duplicates == 0
    assert streams.book.breaks == []
    assert streams.trade_ids == streams.trade_ids_in_events
    outcomes = check_outcomes(bootstrap, codec, ns)
    assert outcomes.missing == [] and outcomes.duplicated == []
    registry = MarketRegistry.load(load_settings().markets_file)
    for partition in range(PARTITIONS):
        expected, offline_state = offline_events(bootstrap, ns, partition, codec)
        actual = committed_events(bootstrap, ns, partition, codec)
        first = next((i for i, (a, e) in enumerate(zip(actual, expected, strict=False)) if a != e), None)
        assert first is None and len(actual) == len(expected), (
            f"partition {partition}: {len(actual)} committed events, {len(expected)} expected; first "
            f"difference at {first}: {actual[first] if first is not None else None} != "
            f"{expected[first] if first is not None else None}")
        # The live engine's recorded hashes (including the final one) match the offline replay.
        state, report = recover(bootstrap, registry, codec, partition, ns, None, use_snapshot=False, strict=False)
        assert report.mismatches == []
        if offline_state.commands:
            assert report.hashes_checked > 0
        assert state.state_hash() == offline_state.state_hash()


def engine(stage: Stage, instance: str, log_dir: Path, args: list[str] | None = None) -> EngineProcess:
    return EngineProcess(stage.bootstrap, stage.ns, stage.group, instance, log_dir,
                         args=ENGINE_ARGS if args is None else args)


def committed(stage: Stage) -> int:
    return committed_total(stage.bootstrap, stage.ns, stage.group)


def drain(stage: Stage, *engines: EngineProcess) -> None:
    """Wait until the group has consumed all input, then stop the engines gracefully."""
    total = input_total(stage.bootstrap, stage.ns)
    wait_for(lambda: committed(stage) >= total, 120, "the engines to consume all input")
    for process in engines:
        assert process.stop() == 0, f"unclean exit: see {process.log_path}"


def _progress(stage: Stage, before: int, process: EngineProcess) -> int:
    """The committed total once it passed ``before`` or reached the end of the input (0 = not
    yet); fails if the engine died."""
    assert process.alive(), f"engine exited: see {process.log_path}"
    total = committed(stage)
    return total if total > before or total >= input_total(stage.bootstrap, stage.ns) else 0


def _members(stage: Stage, owning: bool = False) -> int:
    """Members of the engine group (``owning``: only those with partitions assigned)."""
    admin = AdminClient({"bootstrap.servers": stage.bootstrap})
    members = admin.describe_consumer_groups([stage.group])[stage.group].result(30).members
    return sum(1 for m in members if not owning or (m.assignment and m.assignment.topic_partitions))


def test_sigkill_at_random_moments(stage: Stage, codec: Codec, log_dir: Path, unique: str) -> None:
    rng = random.Random(unique)
    load = Load(stage, count=60_000, rate=2000, seed=11).start()
    process = engine(stage, "crash-1", log_dir)
    done = 0
    for _ in range(20):
        process.start()
        # Kill only once this incarnation has committed something: every kill interrupts real work.
        done = wait_for(lambda d=done: _progress(stage, d, process), 60, "the restarted engine to commit")
        time.sleep(rng.uniform(0.0, 0.8))  # a random kill moment, not a synchronisation
        process.kill()
    load.join()
    process.start().wait_assigned()
    drain(stage, process)
    assert_exactly_once(stage, codec)


@pytest.mark.parametrize("point", ["after-produce:3", "during-snapshot:1"])
def test_named_crash_points(point: str, stage: Stage, codec: Codec, log_dir: Path) -> None:
    Load(stage, count=12_000, rate=None, seed=12).start().join()
    process = engine(stage, "crashpt-1", log_dir, ["--snapshot-every", "1000", "--batch-size", "500"])
    for _ in range(3):
        process.start({"EXCHANGE_CRASH_POINT": point})
        assert process.proc is not None
        assert process.proc.wait(120) == -signal.SIGKILL, f"crash point {point} not reached: {process.log_path}"
    process.start().wait_assigned()
    drain(stage, process)
    assert_exactly_once(stage, codec)


def test_zombie_is_fenced(stage: Stage, codec: Codec, log_dir: Path) -> None:
    load = Load(stage, count=40_000, rate=2000, seed=13).start()
    a = engine(stage, "zombie-a", log_dir).start()
    b = engine(stage, "zombie-b", log_dir).start()
    # Pause a only once it owns partitions: the scenario is an owner that goes silent.
    wait_for(lambda: _members(stage, owning=True) == 2, 60, "both instances to own partitions")
    before = committed(stage)
    wait_for(lambda: committed(stage) > before + 2000, 60, "progress with two instances")
    a.signal(signal.SIGSTOP)
    # The group drops the paused member after its session timeout; b takes every partition.
    wait_for(lambda: _members(stage) == 1, 60, "the paused member to leave the group")
    progress = committed(stage)
    wait_for(lambda: committed(stage) > progress + 1000, 60, "b to process a's partitions")
    a.signal(signal.SIGCONT)
    load.join()
    drain(stage, a, b)
    assert_exactly_once(stage, codec)


def test_rebalance_under_load(stage: Stage, codec: Codec, log_dir: Path) -> None:
    load = Load(stage, count=30_000, rate=2500, seed=14).start()
    a = engine(stage, "rebal-a", log_dir).start()
    wait_for(lambda: committed(stage) > 2000, 60, "a to make progress")
    b = engine(stage, "rebal-b", log_dir).start()
    wait_for(lambda: _members(stage) == 2, 60, "b to join")
    progress = committed(stage)
    wait_for(lambda: committed(stage) > progress + 2000, 60, "progress with two instances")
    assert a.stop() == 0
    load.join()
    drain(stage, b)
    assert_exactly_once(stage, codec)


def test_malformed_input_goes_to_dead_letters(stage: Stage, codec: Codec, log_dir: Path) -> None:
    producer = make_producer(stage.bootstrap)
    topic = stage.ns(ORDERS_COMMANDS)
    garbage = [b"", b"\x00\x01garbage", b"\xc3\x01" + b"\x00" * 8 + b"body", b"{json: 1}"]
    flow = Load(stage, count=0, rate=None, seed=15).flow
    sent_bad = 0
    for i in range(2000):
        market, command = flow.next()
        producer.produce(topic, codec.encode(ORDERS_COMMANDS, command_to_record(market, command)), market.encode())
        if i % 250 == 0:
            producer.produce(topic, garbage[sent_bad % len(garbage)], market.encode())
            sent_bad += 1
    # A well-formed command for a market the registry does not know.
    unknown = command_to_record("NOPE-USD", Cancel("x", 0, "o", "a"))
    producer.produce(topic, codec.encode(ORDERS_COMMANDS, unknown), b"NOPE-USD")
    sent_bad += 1
    assert producer.flush(30) == 0
    process = engine(stage, "dlq-1", log_dir, []).start()
    process.wait_assigned()
    drain(stage, process)
    outcomes = check_outcomes(stage.bootstrap, codec, stage.ns)
    assert outcomes.dead_letters == sent_bad
    assert outcomes.missing == [] and outcomes.duplicated == []
    assert outcomes.commands == 2000 + sent_bad
    consumer = standalone_consumer(stage.bootstrap)
    reasons = set()
    for partition in range(PARTITIONS):
        low, high = watermarks(consumer, stage.ns(DLQ_ORDERS_COMMANDS), partition)
        for message in read_range(consumer, stage.ns(DLQ_ORDERS_COMMANDS), partition, low, high):
            headers = dict(message.headers() or [])
            assert headers["xchg.source"].startswith(topic.encode())
            reasons.add(headers["xchg.error.reason"].decode())
    consumer.close()
    assert {"empty", "unknown_framing", "unknown_fingerprint", "unknown_market"} <= reasons
    assert_exactly_once(stage, codec)
