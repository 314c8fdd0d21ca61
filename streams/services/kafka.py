"""Apache Kafka (KRaft) from Maven Central jars: fetch, format once, start, check, stop.

The broker classpath is copied by ``mvn -f infra/kafka/pom.xml package`` into
``<runtime>/kafka/lib``. A cluster of N combined broker+controller nodes lives under
``<runtime>/kafka/``; ``cluster.json`` records its size and id so that every command (and every
test session) sees the same bootstrap list. Node i listens on ``kafka_port + 10*(i-1)`` and its
controller on the next port. Ready means an admin metadata call returns every broker.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from confluent_kafka.admin import AdminClient

from streams.services.errors import ServiceError
from streams.services.prerequisites import require, require_java
from streams.services.process import ManagedProcess, wait_until
from streams.settings import PROJECT_ROOT, Settings

INFRA = PROJECT_ROOT / "infra" / "kafka"
PORT_STRIDE = 10


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    broker_port: int
    controller_port: int
    home: Path

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name=f"kafka-{self.node_id}",
            pid_file=self.home / "kafka.pid",
            log_file=self.home / "logs" / "console.log",
            marker=f"{self.home}/server.properties",
        )


class KafkaCluster:
    def __init__(self, settings: Settings, brokers: int | None = None) -> None:
        self.settings = settings
        self.root = settings.runtime_dir / "kafka"
        self.lib = self.root / "lib"
        recorded = self._recorded()
        self.brokers = brokers or (recorded["brokers"] if recorded else 1)
        if self.brokers not in (1, 3):
            raise ServiceError(f"--brokers must be 1 or 3, not {self.brokers}")

    # -- layout -----------------------------------------------------------------------------------
    def _recorded(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.root / "cluster.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def nodes(self) -> list[KafkaNode]:
        base = self.settings.kafka_port
        ctrl = self.settings.kafka_controller_port
        return [
            KafkaNode(i, base + PORT_STRIDE * (i - 1), ctrl + PORT_STRIDE * (i - 1),
                      self.root / f"cluster-{self.brokers}" / f"node-{i}")
            for i in range(1, self.brokers + 1)
        ]

    def bootstrap_servers(self) -> str:
        if not self.settings.local_kafka:
            return str(self.settings.kafka_bootstrap)
        return ",".join(f"127.0.0.1:{n.broker_port}" for n in self.nodes())

    def version(self) -> str | None:
        for jar in sorted(self.lib.glob("kafka_2.13-*.jar")):
            return jar.name.removeprefix("kafka_2.13-").removesuffix(".jar")
        return None

    # -- install ----------------------------------------------------------------------------------
    def ensure_jars(self) -> None:
        """Copy the broker classpath from Maven (a no-op once the jars are there)."""
        if self.version() is not None and (self.lib / ".complete").exists():
            return
        mvn = require("mvn")
        require_java()
        self.lib.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(INFRA / "pom.xml"), f"-Dkafka.lib.dir={self.lib}", "package"],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0 or self.version() is None:
            detail = (result.stdout + result.stderr).strip().splitlines()
            raise ServiceError(
                "could not fetch the Kafka broker jars with Maven: "
                + (detail[-1] if detail else f"exit {result.returncode}")
            )
        (self.lib / ".complete").write_text("ok\n")

    def _render(self, node: KafkaNode) -> Path:
        if self.brokers == 1:
            quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{node.controller_port}"
        else:
            voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes())
            quorum = f"controller.quorum.voters={voters}"
        replication = self.brokers
        min_isr = 1 if self.brokers == 1 else 2
        text = Template((INFRA / "server.properties.template").read_text()).substitute(
            node_id=node.node_id, broker_port=node.broker_port, controller_port=node.controller_port,
            quorum=quorum, log_dir=node.home / "data", replication=replication, min_isr=min_isr,
        )
        node.home.mkdir(parents=True, exist_ok=True)
        path = node.home / "server.properties"
        path.write_text(text)
        return path

    def _java(self, node: KafkaNode, main: str, *args: str, heap: str | None = None) -> list[str]:
        java = require_java()
        if heap:  # the broker; its collections are logged, timestamped, to line up with latency spikes
            opts = [f"-Xms{heap}", f"-Xmx{heap}",
                    f"-Xlog:gc:file={node.home / 'logs' / 'gc.log'}:time,uptime:filecount=3,filesize=10m"]
            if self.settings.kafka_jit == "c1":
                # C2 recompiling the request path after a start kept a core busy for minutes: the
                # first `xchg bench pipeline` after `make services` had p99 290-990 ms (C1 only:
                # 140-190 ms) and 14-18k commands/s (C1: 20-24k). Warm, C1 code costs more CPU
                # (broker 80-90 % of a core at 5,000/s vs ~65 % with C2) and a few ms at p50. The
                # broker here lives for a session, so C1 (README "Benchmarks").
                opts.append("-XX:TieredStopAtLevel=1")
        else:  # a command-line tool (storage format)
            opts = ["-Xmx256m"]
        return [
            # ZGC rather than Kafka's default G1: the broker allocates ~100 MB/s under an
            # exactly-once load, and on two busy cores G1's young pauses (every ~0.6 s, 15-230 ms
            # as its GC threads waited for CPU) stalled every in-flight request; ZGC's pauses stay
            # under a millisecond (figures in README "Benchmarks"). ZGC needs headroom (at 1g it
            # ran 92 % full and stalled allocations): see Settings.kafka_heap.
            java, *opts, "-XX:+UseZGC", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={INFRA / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={node.home / 'logs'}",
            "-cp", f"{self.lib}/*", main, *args,
        ]

    def _format(self, node: KafkaNode, config: Path, cluster_id: str) -> None:
        if (node.home / "data" / "meta.properties").exists():
            return
        args = ["format", "-t", cluster_id, "-c", str(config)]
        if self.brokers == 1:
            args.append("--standalone")
        result = subprocess.run(self._java(node, "kafka.tools.StorageTool", *args),
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            last = (result.stdout + result.stderr).strip().splitlines()
            raise ServiceError(f"kafka-{node.node_id}: storage format failed: {last[-1] if last else ''}")

    # -- lifecycle --------------------------------------------------------------------------------
    def running_nodes(self) -> list[KafkaNode]:
        return [n for n in self.nodes() if n.process.running()]

    def up(self, timeout: float = 90.0) -> str:
        recorded = self._recorded()
        if recorded and recorded.get("brokers") != self.brokers and KafkaCluster(self.settings).running_nodes():
            raise ServiceError(
                f"a {recorded['brokers']}-broker Kafka cluster is running: run `xchg infra down` first"
            )
        if not self.running_nodes() and self.describe(timeout=2.0) is not None:
            raise ServiceError(
                f"a Kafka broker not started by xchg already answers on {self.bootstrap_servers()}: "
                "stop it, or set EXCHANGE_KAFKA_PORT (or EXCHANGE_KAFKA_BOOTSTRAP to use it)"
            )
        self.ensure_jars()
        cluster_dir = self.root / f"cluster-{self.brokers}"
        id_file = cluster_dir / "cluster.id"
        if id_file.exists():
            cluster_id = id_file.read_text().strip()
        else:
            cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
            cluster_dir.mkdir(parents=True, exist_ok=True)
            id_file.write_text(cluster_id + "\n")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "cluster.json").write_text(json.dumps({"brokers": self.brokers, "cluster_id": cluster_id}))
        for node in self.nodes():
            if node.process.running():
                continue
            config = self._render(node)
            self._format(node, config, cluster_id)
            node.process.start(self._java(node, "kafka.Kafka", str(config), heap=self.settings.kafka_heap),
                               env={**os.environ, "LOG_DIR": str(node.home / "logs")})
        self.wait_ready(timeout)
        return cluster_id

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            for node in self.nodes():
                if not node.process.running():
                    tail = node.process.log_tail(5) or _tail(node.home / "logs" / "server.log")
                    raise ServiceError(f"kafka-{node.node_id} exited during start-up: {tail.splitlines()[-1:] }")
            return self.describe(timeout=2.0) is not None

        if not wait_until(ready, timeout, interval=0.5):
            raise ServiceError(f"Kafka did not answer an admin call within {timeout:.0f}s "
                               f"(see `xchg infra logs kafka`)")

    def describe(self, timeout: float = 5.0) -> dict[str, object] | None:
        """Cluster id and live brokers from an admin metadata call, or None when unreachable."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers(), "log_level": 0,
                                  "logger": _silent_logger()}
        admin = AdminClient(config)
        try:
            meta = admin.list_topics(timeout=timeout)
        except Exception:
            return None
        if len(meta.brokers) < (self.brokers if self.settings.local_kafka else 1):
            return None
        return {"cluster_id": meta.cluster_id, "brokers": sorted(meta.brokers)}

    def down(self) -> list[str]:
        stopped = []
        for brokers in (1, 3):
            cluster = KafkaCluster(self.settings, brokers)
            # Stop brokers before the last controller so shutdown does not wait on a lost quorum.
            for node in reversed(cluster.nodes()):
                if node.process.stop(timeout=60.0):
                    stopped.append(node.process.name)
        return stopped

    def reset(self) -> None:
        """Delete all topic data (the cluster is re-formatted at the next ``up``)."""
        if self.running_nodes():
            raise ServiceError("stop Kafka first (`xchg infra down`)")
        for brokers in (1, 3):
            shutil.rmtree(self.root / f"cluster-{brokers}", ignore_errors=True)
        (self.root / "cluster.json").unlink(missing_ok=True)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


class _Silent:
    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


def _silent_logger() -> object:
    """librdkafka logs connection refusals while a broker starts; readiness polling ignores them."""
    return _Silent()
