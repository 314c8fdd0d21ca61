"""``xchg infra up --brokers 3``: three KRaft nodes, topics at replication 3 / min ISR 2, and
transactions that survive the loss of one broker."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from streams.runtime.clients import consumer_config, make_producer
from streams.settings import PROJECT_ROOT, load_settings
from tests.pipeline import wait_for
from tests.services import Endpoint

pytestmark = pytest.mark.integration


def _free_base_port() -> int:
    """A base port whose +0/+1, +10/+11 and +20/+21 neighbours are free (node i uses base + 10(i-1))."""
    for base in range(39000, 40000, 100):
        ports = [base + offset for node in range(3) for offset in (10 * node, 10 * node + 1)]
        try:
            sockets = []
            for port in ports:
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
        return base
    raise AssertionError("no free port range for three brokers")


def test_three_broker_cluster(kafka: Endpoint, tmp_path: Path) -> None:
    if kafka.mode != "local":
        pytest.skip("the local Kafka launcher is not in use")
    base = _free_base_port()
    runtime = tmp_path / "run"
    (runtime / "kafka").mkdir(parents=True)
    shutil.copytree(load_settings().runtime_dir / "kafka" / "lib", runtime / "kafka" / "lib")
    env = {**os.environ, "EXCHANGE_RUNTIME_DIR": str(runtime), "EXCHANGE_KAFKA_PORT": str(base),
           "EXCHANGE_KAFKA_CONTROLLER_PORT": str(base + 1), "EXCHANGE_KAFKA_HEAP": "512m"}

    def xchg(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300, check=False)

    up = xchg("infra", "up", "kafka", "--brokers", "3")
    try:
        assert up.returncode == 0, up.stderr
        bootstrap = ",".join(f"127.0.0.1:{base + 10 * i}" for i in range(3))
        assert xchg("topics", "apply").returncode == 0
        admin = AdminClient({"bootstrap.servers": bootstrap})
        meta = admin.list_topics(timeout=30)
        assert sorted(meta.brokers) == [1, 2, 3]
        topic = meta.topics["orders.commands"]
        assert all(len(p.replicas) == 3 for p in topic.partitions.values())
        resource = ConfigResource(ResourceType.TOPIC, "orders.commands")
        assert admin.describe_configs([resource])[resource].result(30)["min.insync.replicas"].value == "2"

        # Stop one broker: with min ISR 2 of 3, transactions still commit and stay exactly-once.
        node3 = runtime / "kafka" / "cluster-3" / "node-3" / "kafka.pid"
        subprocess.run(["kill", node3.read_text().strip()], check=True)
        producer = make_producer(bootstrap, "three-brokers-test")
        producer.init_transactions(60)
        producer.begin_transaction()
        for i in range(100):
            producer.produce("orders.commands", f"v{i}".encode(), b"BTC-USD")
        producer.commit_transaction(60)
        # commit_transaction returns once the coordinator logged the decision; the markers that
        # make the records visible follow, after the ISR drops the dead broker (up to
        # replica.lag.time.max.ms). So read them, as a read_committed consumer sees them.
        consumer = Consumer(consumer_config(bootstrap, "three-brokers-check"))
        consumer.assign([TopicPartition("orders.commands", p, OFFSET_BEGINNING) for p in topic.partitions])
        seen: list[bytes] = []

        def all_visible() -> bool:
            seen.extend(m.value() or b"" for m in consumer.consume(100, 1.0) if m.error() is None)
            return len(seen) >= 100

        wait_for(all_visible, 120, "the committed records to become visible")
        seen.extend(m.value() or b"" for m in consumer.consume(100, 2.0) if m.error() is None)
        assert sorted(seen) == sorted(f"v{i}".encode() for i in range(100))  # each exactly once
        consumer.close()
        # `up` again restarts the missing node (idempotent), so the cluster also stops cleanly.
        assert xchg("infra", "up", "kafka").returncode == 0
        assert len(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).brokers) == 3
    finally:
        down = xchg("infra", "down", "kafka")
        assert down.returncode == 0, down.stderr
