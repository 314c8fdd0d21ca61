"""Test helpers around real pipeline processes: fresh topics, engine subprocesses, offline replay.

Crash tests run ``xchg engine run`` as real OS processes and SIGKILL them; these helpers start
them with a per-test consumer group and transactional-id prefix, and wait on observable state
(committed offsets, group membership), never on fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.markets import MarketRegistry
from streams.runtime.namespace import Namespace
from streams.runtime.partition import PartitionState
from streams.runtime.reader import committed_total as reader_committed_total
from streams.runtime.reader import read_range, standalone_consumer, watermarks
from streams.runtime.records import event_record
from streams.runtime.topic_admin import TopicAdmin, load_topic_file
from streams.serde.codec import Codec
from streams.serde.topics import ORDERS_COMMANDS, ORDERS_EVENTS
from streams.settings import PROJECT_ROOT, load_settings

XCHG = [sys.executable, "-m", "streams.cli"]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll an observable condition; fail the test with ``what`` when it does not come true."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# Namespaces the running test created: their topics are deleted when it ends (tests/conftest.py),
# so that a session does not leave thousands of partitions on the broker (each one costs it
# memory, file handles and preallocated index files, and slows every metadata request).
CREATED_NAMESPACES: list[tuple[str, str]] = []


def forget_namespaces() -> None:
    """Delete the topics of every namespace the test created (best effort: a leftover topic only
    costs space)."""
    from confluent_kafka.admin import AdminClient

    while CREATED_NAMESPACES:
        bootstrap, prefix = CREATED_NAMESPACES.pop()
        admin = AdminClient({"bootstrap.servers": bootstrap})
        try:
            topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
            if topics:
                for future in admin.delete_topics(topics, operation_timeout=30).values():
                    future.result(30)
        except Exception:  # cleanup must never fail a test
            continue


def fresh_namespace(bootstrap: str, name: str) -> Namespace:
    """A namespace of its own (every project topic under a fresh prefix), created on the broker
    and deleted when the test ends."""
    namespace = Namespace(f"t-{name}.")
    CREATED_NAMESPACES.append((bootstrap, namespace.prefix))
    TopicAdmin(bootstrap).apply(load_topic_file(load_settings().topics_file, namespace.prefix))
    return namespace


class EngineProcess:
    """One ``xchg engine run`` OS process with per-test group settings. Every instance is listed
    in ``EngineProcess.started`` so a fixture can kill leftovers when a test fails midway."""

    started: list[EngineProcess] = []  # noqa: RUF012 - a registry shared by design

    def __init__(self, bootstrap: str, ns: Namespace, group: str | None, instance: str | None, log_dir: Path,
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        """``group`` None: the engine's own group and transactional ids (derived from the
        namespace); ``instance`` None: its own static member id."""
        self.bootstrap, self.instance = bootstrap, instance
        self.group = group or ns("xchg-engine")
        self.log_path = log_dir / f"{instance or ns.prefix + 'engine'}.log"
        identity = {} if group is None else {"EXCHANGE_ENGINE_GROUP": group,
                                             "EXCHANGE_ENGINE_TRANSACTIONAL_PREFIX": f"{group}-txn"}
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_ENGINE_")}
        self.env = {
            **inherited,
            "EXCHANGE_KAFKA_BOOTSTRAP": bootstrap,
            "EXCHANGE_TOPIC_PREFIX": ns.prefix,
            **identity,
            # Long enough that a broker slowed by a loaded machine does not expire healthy members.
            "EXCHANGE_ENGINE_SESSION_TIMEOUT_MS": "10000",
            **(env or {}),
        }
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        EngineProcess.started.append(self)

    def start(self, extra_env: dict[str, str] | None = None) -> EngineProcess:
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*XCHG, "engine", "run", *(["--instance", self.instance] if self.instance else []), *self.args],
                env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
            )
        return self

    def log_since_start(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

    def wait_assigned(self, timeout: float = 60) -> None:
        """Until this incarnation has recovered and been assigned partitions (its log says so)."""
        def ready() -> bool:
            assert self.alive(), f"engine exited: see {self.log_path}"
            return '"assigned"' in self.log_since_start()

        wait_for(ready, timeout, f"{self.log_path.stem} to be assigned partitions")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def committed_total(bootstrap: str, ns: Namespace, group: str, partitions: int = 4) -> int:
    """Sum of the group's committed input offsets (-1 if the broker does not answer in time)."""
    total = reader_committed_total(bootstrap, group, ns(ORDERS_COMMANDS), partitions)
    return -1 if total is None else total


def input_total(bootstrap: str, ns: Namespace, partitions: int = 4) -> int:
    consumer = standalone_consumer(bootstrap)
    try:
        return sum(watermarks(consumer, ns(ORDERS_COMMANDS), p)[1] for p in range(partitions))
    finally:
        consumer.close()


def offline_events(bootstrap: str, ns: Namespace, partition: int,
                   codec: Codec) -> tuple[list[dict[str, Any]], PartitionState]:
    """The orders.events records an uninterrupted engine produces for one input partition."""
    registry = MarketRegistry.load(load_settings().markets_file)
    state = PartitionState(partition, registry, codec)
    out: list[dict[str, Any]] = []
    consumer = standalone_consumer(bootstrap)
    try:
        low, high = watermarks(consumer, ns(ORDERS_COMMANDS), partition)
        for message in read_range(consumer, ns(ORDERS_COMMANDS), partition, low, high):
            result = state.process(message.offset(), message.value(), message.timestamp()[1])
            if result.command is not None and result.market is not None:
                out.extend(event_record(result.market, e, result.command.command_id, partition, message.offset())
                           for e in result.events)
    finally:
        consumer.close()
    return out, state


def committed_events(bootstrap: str, ns: Namespace, partition: int, codec: Codec) -> list[dict[str, Any]]:
    """orders.events records of one output partition as a read_committed consumer sees them."""
    consumer = standalone_consumer(bootstrap)
    try:
        low, high = watermarks(consumer, ns(ORDERS_EVENTS), partition)
        return [codec.decode(ORDERS_EVENTS, m.value())
                for m in read_range(consumer, ns(ORDERS_EVENTS), partition, low, high)]
    finally:
        consumer.close()
