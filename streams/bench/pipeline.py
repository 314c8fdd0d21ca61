"""Pipeline benchmarks on the real broker, each in a topic namespace of its own (deleted after).

``run_pipeline`` measures, in one run:

1. **throughput**: ``commands`` commands of the standard flow are produced first, then one
   matching engine with exactly-once transactions consumes them; commands per second counts from
   its first to its last commit;
2. **passthrough**: the same input copied record for record to another topic by a
   consume→produce loop with the same transactional settings and batch size (the floor the
   engine is compared with); ``ratio`` = engine / passthrough;
3. **latency**: an engine process runs while commands are produced at a fixed offered rate; the
   latency of a command is from its *scheduled* send time to the moment a ``read_committed``
   consumer sees its outcome event, so a stalled producer or engine counts against the figure
   (no coordinated omission). A warm-up load of ``warmup_s`` seconds at the same rate comes
   first (first transactions, connections, the books filling up) and the measured load starts
   once the engine has committed all of it.

Both the throughput run and the measured latency load report the host's CPU split meanwhile
(busy, and stolen by the hypervisor): on a shared VM a slow figure is often the neighbours'.

``run_recovery`` produces ``commands`` commands, lets an engine process consume them with the
default snapshot interval, SIGKILLs it, starts a new one and measures from process start to the
outcome of the first command produced after the kill.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.bench.host import HostCpuSampler
from streams.domain.events import OUTCOME_NAMES
from streams.loadgen import OrderFlow, encode_flow, produce_flow, send_commands
from streams.markets import MarketRegistry
from streams.processors.matching import MatchingConfig, MatchingProcessor
from streams.runtime.clients import consumer_config, make_producer, producer_config
from streams.runtime.collector import paused
from streams.runtime.namespace import Namespace
from streams.runtime.reader import committed_total, standalone_consumer, topic_partitions, watermarks
from streams.runtime.topic_admin import TopicAdmin, load_topic_file
from streams.serde.codec import Codec
from streams.serde.topics import ORDERS_COMMANDS, ORDERS_EVENTS
from streams.settings import PROJECT_ROOT, Settings

# The watcher tests the event's type name before anything else (it shares the CPU it measures).
OUTCOMES = tuple(name.encode() for name in OUTCOME_NAMES)


@dataclass
class Stage:
    bootstrap: str
    ns: Namespace
    settings: Settings
    extra_topics: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, bootstrap: str, settings: Settings, label: str) -> Stage:
        ns = Namespace(f"bench-{label}-{uuid.uuid4().hex[:8]}.")
        TopicAdmin(bootstrap).apply(load_topic_file(settings.topics_file, ns.prefix))
        return cls(bootstrap, ns, settings)

    def drop(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(self.ns.prefix)]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(KafkaException):
                    future.result()

    def input_end(self) -> int:
        consumer = standalone_consumer(self.bootstrap)
        try:
            return sum(watermarks(consumer, self.ns(ORDERS_COMMANDS), p)[1] for p in range(self.partitions()))
        finally:
            consumer.close()

    def partitions(self) -> int:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        topic = self.ns(ORDERS_COMMANDS)
        return len(topic_partitions(admin, topic))


def _flow(settings: Settings, seed: int) -> OrderFlow:
    registry = MarketRegistry.load(settings.markets_file)
    return OrderFlow([m.spec() for m in registry], seed)


def _preload(stage: Stage, commands: int, seed: int, report: Callable[[str], None]) -> None:
    load = produce_flow(
        make_producer(stage.bootstrap), Codec(), _flow(stage.settings, seed), commands, None, ns=stage.ns
    )
    report(f"preloaded {load.sent} commands at {load.rate:,.0f}/s")


# -- 1. engine throughput ---------------------------------------------------------------------------


def engine_throughput(
    stage: Stage, batch_size: int, report: Callable[[str], None]
) -> tuple[float, dict[str, float] | None]:
    """Commands per second from the engine's first to its last commit, and the host's CPU split
    over the run (``streams/bench/host.py``)."""
    registry = MarketRegistry.load(stage.settings.markets_file)
    processor = MatchingProcessor(
        MatchingConfig(
            bootstrap=stage.bootstrap,
            group_id=f"{stage.ns.prefix}engine",
            instance_id="bench-engine",
            transactional_prefix=f"{stage.ns.prefix}engine",
            batch_size=batch_size,
            idle_exit_s=3.0,
            namespace=stage.ns,
        ),
        registry,
        Codec(),
    )
    host = HostCpuSampler()
    host.start()
    try:
        processor.run()
    finally:
        host.stop()
    if processor.throughput.first_commit is None or processor.throughput.last_commit is None:
        raise RuntimeError("the engine committed nothing")
    (first_at, first_count), (last_at, last_count) = processor.throughput.first_commit, processor.throughput.last_commit
    host_cpu = host.summary(first_at, last_at)  # the measured span, not the idle wait before the exit
    rate = (last_count - first_count) / max(last_at - first_at, 1e-6)
    report(f"engine: {processor.throughput.processed} commands, {rate:,.0f}/s with exactly-once")
    if host_cpu is not None:
        report(_host_line(host_cpu))
    return rate, host_cpu


def _host_line(host_cpu: dict[str, float]) -> str:
    return (
        f"host CPU meanwhile: {host_cpu['busy_pct']}% busy, {host_cpu['steal_pct']}% stolen by the"
        f" hypervisor (worst second {host_cpu['steal_pct_worst_second']}%)"
    )


# -- 2. passthrough ---------------------------------------------------------------------------------


def passthrough(stage: Stage, batch_size: int, report: Callable[[str], None]) -> float:
    """consume → produce the same bytes, one transaction per batch per partition, offsets included."""
    out = stage.ns("passthrough")
    partitions = stage.partitions()
    admin = AdminClient({"bootstrap.servers": stage.bootstrap})
    for future in admin.create_topics([NewTopic(out, partitions, 1)]).values():
        future.result()
    total = stage.input_end()
    group = f"{stage.ns.prefix}passthrough"
    consumer = Consumer(consumer_config(stage.bootstrap, group, **{"fetch.wait.max.ms": 10}))
    consumer.assign([TopicPartition(stage.ns(ORDERS_COMMANDS), p, 0) for p in range(partitions)])
    producers: dict[int, Producer] = {}
    for p in range(partitions):
        producers[p] = Producer(
            producer_config(
                stage.bootstrap,
                f"{group}-p{p}",
                **{"linger.ms": 2, "queue.buffering.max.messages": 1_000_000, "batch.size": 1_000_000},
            )
        )
        producers[p].init_transactions(30)
    done = 0
    started = None
    while done < total:
        messages = consumer.consume(batch_size, 0.05)
        if not messages:
            continue
        if started is None:
            started = time.monotonic()
        by_partition: dict[int, list[Any]] = {}
        for message in messages:
            if message.error() is None:
                by_partition.setdefault(message.partition() or 0, []).append(message)
        for p, batch in by_partition.items():
            producer = producers[p]
            producer.begin_transaction()
            for message in batch:
                producer.produce(out, message.value(), message.key())
            producer.send_offsets_to_transaction(
                [TopicPartition(stage.ns(ORDERS_COMMANDS), p, batch[-1].offset() + 1)],
                consumer.consumer_group_metadata(),
                30,
            )
            producer.commit_transaction(30)
            done += len(batch)
    elapsed = time.monotonic() - (started or time.monotonic())
    consumer.close()
    rate = done / max(elapsed, 1e-6)
    report(f"passthrough: {done} records, {rate:,.0f}/s with the same transactional settings")
    return rate


# -- 3. latency -------------------------------------------------------------------------------------


def engine_process(
    stage: Stage, instance: str, log_path: str, args: list[str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EXCHANGE_KAFKA_BOOTSTRAP": stage.bootstrap,
        "EXCHANGE_TOPIC_PREFIX": stage.ns.prefix,
        "EXCHANGE_ENGINE_GROUP": f"{stage.ns.prefix}engine",
        "EXCHANGE_ENGINE_TRANSACTIONAL_PREFIX": f"{stage.ns.prefix}engine",
    }
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "engine", "run", "--instance", instance, *(args or [])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
        )


def _wait_for_log(path: str, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited early, see {path}")
        with open(path, errors="replace") as log:
            if needle in log.read():
                return
        time.sleep(0.1)
    raise RuntimeError(f"engine not ready after {timeout:.0f}s, see {path}")


def _wait_committed(stage: Stage, group: str, total: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until ``group`` has committed ``total`` input offsets (or the engine died / time ran out)."""
    deadline = time.monotonic() + timeout
    partitions = stage.partitions()
    while (committed_total(stage.bootstrap, group, stage.ns(ORDERS_COMMANDS), partitions, 30) or 0) < total:
        if proc.poll() is not None:
            raise RuntimeError("the engine exited during the benchmark")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the engine did not consume {total} commands within {timeout:.0f}s")
        time.sleep(0.2)


class OutcomeWatcher(threading.Thread):
    """Reads orders.events (read_committed) and timestamps the first outcome of each command."""

    def __init__(self, stage: Stage, sample: int = 1, from_end: bool = False) -> None:
        super().__init__(daemon=True)
        self.stage = stage
        self.from_end = from_end  # skip what is already in the topic (it only watches new commands)
        self.sample = sample  # decode one event in ``sample`` (by offset): the watcher shares the CPU
        self.seen: dict[str, float] = {}
        self.stop_flag = threading.Event()
        self.ready = threading.Event()
        self.codec = Codec()

    def run(self) -> None:
        consumer = Consumer(
            consumer_config(
                self.stage.bootstrap,
                f"{self.stage.ns.prefix}watch-{uuid.uuid4().hex[:6]}",
                **{"fetch.wait.max.ms": 5},
            )
        )
        topic = self.stage.ns(ORDERS_EVENTS)
        # assign, not subscribe: no group join, so the watcher reads from the first event on.
        start = OFFSET_END if self.from_end else 0
        consumer.assign([TopicPartition(topic, p, start) for p in range(self.stage.partitions())])
        self.ready.set()
        decode = self.codec.decode
        while not self.stop_flag.is_set():
            # consume() waits until the batch is full or the timeout ends: a short timeout keeps
            # that wait from being counted as latency.
            for message in consumer.consume(1000, 0.002):
                if message.error() is not None:
                    continue
                if self.sample > 1 and (message.offset() or 0) % self.sample:
                    continue
                now = time.monotonic()
                record = decode(ORDERS_EVENTS, message.value())
                name = record["body"][0].encode()
                if name.endswith(OUTCOMES):
                    self.seen.setdefault(record["command_id"], now)
        consumer.close()


def latency(
    stage: Stage, rate: float, seconds: float, warmup_s: float, log_dir: str, report: Callable[[str], None]
) -> dict[str, Any]:
    proc = engine_process(stage, "bench-latency", f"{log_dir}/bench-latency.log")
    try:
        _wait_for_log(f"{log_dir}/bench-latency.log", '"assigned"', proc, 60)
        watcher = OutcomeWatcher(stage, sample=4)
        watcher.start()
        watcher.ready.wait(30)
        scheduled: dict[str, float] = {}
        # The gateway's producer batches for 5 ms (the client default); that wait counts in the
        # latency. A 1 ms linger sent ~1000 requests/s, whose cost to the shared CPUs showed up as
        # a worse tail.
        producer, codec, flow = make_producer(stage.bootstrap), Codec(), _flow(stage.settings, 2)
        produce_flow(producer, codec, flow, int(rate * warmup_s), rate, ns=stage.ns)
        _wait_committed(stage, f"{stage.ns.prefix}engine", stage.input_end(), proc, timeout=60)
        commands = list(encode_flow(flow, codec, int(rate * seconds)))  # encoded before the clock starts
        host = HostCpuSampler()
        host.start()
        with paused():
            load = send_commands(producer, commands, rate, on_send=scheduled.__setitem__, ns=stage.ns)
        # Done when the engine has committed every command and the watcher has gone quiet.
        _wait_committed(stage, f"{stage.ns.prefix}engine", stage.input_end(), proc, timeout=60)
        host.stop()
        host_cpu = host.summary()
        seen, quiet_since = len(watcher.seen), time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            time.sleep(0.1)
            if len(watcher.seen) != seen:
                seen, quiet_since = len(watcher.seen), time.monotonic()
        watcher.stop_flag.set()
        watcher.join(10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    samples = sorted((watcher.seen[c] - t) * 1000 for c, t in scheduled.items() if c in watcher.seen)

    def pct(q: float) -> float:
        return round(samples[min(len(samples) - 1, int(q * len(samples)))], 2) if samples else float("nan")

    result = {
        "p50": pct(0.50),
        "p99": pct(0.99),
        "p999": pct(0.999),
        "max": round(samples[-1], 2) if samples else None,
        "offered_per_second": rate,
        "achieved_send_per_second": round(load.rate, 1),
        "samples": len(samples),
        "sampled_one_event_in": watcher.sample,
        # The host's cores during the measured load: a high steal share means the hypervisor, not
        # the pipeline, set the tail (streams/bench/host.py).
        "host_cpu": host_cpu,
    }
    report(
        f"latency at {rate:,.0f}/s: p50 {result['p50']} ms, p99 {result['p99']} ms, p99.9 {result['p999']} ms"
    )
    if host_cpu is not None:
        report(_host_line(host_cpu))
    return result


def run_pipeline(
    bootstrap: str,
    settings: Settings,
    commands: int,
    batch_size: int,
    rate: float,
    seconds: float,
    log_dir: str,
    report: Callable[[str], None],
) -> dict[str, Any]:
    throughput_stage = Stage.create(bootstrap, settings, "tput")
    latency_stage = Stage.create(bootstrap, settings, "lat")
    try:
        _preload(throughput_stage, commands, 1, report)
        engine_rate, throughput_host_cpu = engine_throughput(throughput_stage, batch_size, report)
        passthrough_rate = passthrough(throughput_stage, batch_size, report)
        lat = latency(latency_stage, rate, seconds, min(5.0, seconds / 2), log_dir, report)
    finally:
        throughput_stage.drop()
        latency_stage.drop()
    return {
        "commands_per_second": round(engine_rate, 1),
        "passthrough_per_second": round(passthrough_rate, 1),
        "ratio": round(engine_rate / passthrough_rate, 3),
        "commands": commands,
        "batch_size": batch_size,
        "throughput_host_cpu": throughput_host_cpu,
        "latency_ms": lat,
    }


def run_recovery(
    bootstrap: str, settings: Settings, commands: int, log_dir: str, report: Callable[[str], None]
) -> dict[str, Any]:
    stage = Stage.create(bootstrap, settings, "recovery")
    log = f"{log_dir}/bench-recovery.log"
    try:
        _preload(stage, commands, 3, report)
        total = stage.input_end()
        proc = engine_process(stage, "bench-recovery", log)
        _wait_for_log(log, '"assigned"', proc, 120)
        started = time.monotonic()
        _wait_committed(stage, f"{stage.ns.prefix}engine", total, proc, timeout=600)
        report(f"engine consumed {total} commands in {time.monotonic() - started:.1f}s; SIGKILL")
        proc.kill()
        proc.wait(30)
        watcher = OutcomeWatcher(stage, from_end=True)
        watcher.start()
        watcher.ready.wait(30)
        marker_flow = _flow(settings, 4)
        t0 = time.monotonic()
        proc = engine_process(stage, "bench-recovery", log)
        markers: dict[str, float] = {}
        produce_flow(
            make_producer(bootstrap), Codec(), marker_flow, 1, None, on_send=markers.__setitem__, ns=stage.ns
        )
        (marker,) = markers
        while marker not in watcher.seen:
            if proc.poll() is not None or time.monotonic() - t0 > 300:
                raise RuntimeError(f"engine did not recover, see {log}")
            time.sleep(0.01)
        recovery_s = watcher.seen[marker] - t0
        watcher.stop_flag.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        replayed = _replayed_from_log(log)
        report(f"recovered and processed the first command {recovery_s:.2f}s after process start")
    finally:
        stage.drop()
    return {
        "recovery_seconds": round(recovery_s, 3),
        "commands_before_crash": total,
        "snapshot_every": settings.engine_snapshot_every,
        "replayed_commands": replayed,
    }


def _replayed_from_log(path: str) -> int:
    import json

    replayed = 0
    with open(path, errors="replace") as log:
        lines = log.read().splitlines()
    # Only the last incarnation's recoveries: after the last "engine starting".
    start = max(i for i, line in enumerate(lines) if '"engine starting"' in line)
    for line in lines[start:]:
        if '"partition recovered"' in line:
            replayed += int(json.loads(line).get("replayed", 0))
    return replayed
