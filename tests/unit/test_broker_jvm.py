"""The broker's JVM options: GC log always, C1-only JIT unless the operator asks for tiered."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.services.kafka import KafkaCluster
from streams.settings import Settings


def _broker_argv(tmp_path: Path, jit: str) -> list[str]:
    cluster = KafkaCluster(Settings(runtime_dir=tmp_path, kafka_jit=jit))
    node = cluster.nodes()[0]
    return cluster._java(node, "kafka.Kafka", "server.properties", heap="3g")


@pytest.mark.parametrize(("jit", "c1_only"), [("c1", True), ("tiered", False)])
def test_broker_jit_follows_the_setting(tmp_path: Path, jit: str, c1_only: bool) -> None:
    argv = _broker_argv(tmp_path, jit)
    assert ("-XX:TieredStopAtLevel=1" in argv) is c1_only
    assert "-XX:+UseZGC" in argv and "-Xmx3g" in argv
    gc_log = [a for a in argv if a.startswith("-Xlog:gc:file=")]
    assert len(gc_log) == 1 and str(tmp_path / "kafka") in gc_log[0]


def test_tools_run_without_broker_options(tmp_path: Path) -> None:
    cluster = KafkaCluster(Settings(runtime_dir=tmp_path))
    argv = cluster._java(cluster.nodes()[0], "kafka.tools.StorageTool", "info")
    assert not any(a.startswith("-Xlog:gc") or a.startswith("-XX:TieredStopAtLevel") for a in argv)
    assert "-Xmx256m" in argv
