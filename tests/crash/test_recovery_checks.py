"""Recovery checks what it rebuilds: after a crash its replay crosses recorded state hashes and
checks them, and a snapshot that disagrees with its own hash is refused (the engine exits with
one line naming partition, offset and both hashes instead of running on a corrupt state)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from streams.runtime.clients import make_producer
from streams.runtime.reader import standalone_consumer
from streams.runtime.recovery import latest_snapshot
from streams.serde.codec import Codec
from streams.serde.topics import ENGINE_SNAPSHOTS
from tests.crash.conftest import Load, Stage
from tests.crash.test_engine_crash import assert_exactly_once, drain, engine

pytestmark = [pytest.mark.integration, pytest.mark.crash]


def recoveries(log: str) -> list[dict[str, object]]:
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == "partition recovered"]


def test_recovery_after_a_crash_checks_recorded_hashes(stage: Stage, codec: Codec, log_dir: Path) -> None:
    Load(stage, count=8_000, rate=None, seed=41).start().join()
    # No snapshot in reach, a hash checkpoint every 300 commands: the replay after the crash
    # crosses every checkpoint the killed engine committed.
    process = engine(stage, "hashes-1", log_dir,
                     ["--snapshot-every", "1000000", "--hash-every", "300", "--batch-size", "200"])
    process.start({"EXCHANGE_CRASH_POINT": "after-commit:25"})
    assert process.proc is not None
    assert process.proc.wait(120) == -signal.SIGKILL, f"crash point not reached: {process.log_path}"
    process.start().wait_assigned()
    checked = sum(int(r["hashes_checked"]) for r in recoveries(process.log_since_start()))  # type: ignore[call-overload]
    assert checked > 0, f"the recovery checked no recorded hash: see {process.log_path}"
    drain(stage, process)
    assert_exactly_once(stage, codec)


def test_a_corrupted_snapshot_is_refused(stage: Stage, codec: Codec, log_dir: Path) -> None:
    Load(stage, count=4_000, rate=None, seed=42).start().join()
    process = engine(stage, "corrupt-1", log_dir, ["--snapshot-every", "500", "--batch-size", "200"])
    process.start().wait_assigned()
    drain(stage, process)  # a graceful stop leaves a snapshot of every owned partition
    consumer = standalone_consumer(stage.bootstrap)
    try:
        partition, found = next((p, s) for p in range(4)
                                if (s := latest_snapshot(consumer, codec, p, stage.ns, 1 << 62)) is not None)
    finally:
        consumer.close()
    record, _ = found
    record["commands"] += 1  # the market states intact, the partition's counter not
    producer = make_producer(stage.bootstrap)
    producer.produce(stage.ns(ENGINE_SNAPSHOTS), codec.encode(ENGINE_SNAPSHOTS, record), str(partition).encode(),
                     partition=partition)
    assert producer.flush(30) == 0
    process.start()
    assert process.proc is not None
    code = process.proc.wait(90)
    log = process.log_since_start()
    assert code != 0, f"the engine ran on a corrupt snapshot: see {process.log_path}"
    expected = f"snapshot of partition {partition} at offset {record['next_offset']}: recorded hash {record['state_hash']}"
    assert expected in log and "recomputed" in log
    assert "Traceback" not in log
