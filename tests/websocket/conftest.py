"""Fixtures of the gateway tests: a namespace with a seeded flow run through a real engine, and
real gateway processes killed at the end of each test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.loadgen import OrderFlow, produce_flow
from streams.markets import MarketRegistry
from streams.runtime.clients import make_producer
from streams.runtime.namespace import Namespace
from streams.serde.codec import Codec
from streams.settings import load_settings
from tests.pipeline import EngineProcess, committed_total, fresh_namespace, input_total, wait_for
from tests.websocket.gateway import GatewayProcess


@dataclass
class Pipeline:
    bootstrap: str
    ns: Namespace
    log_dir: Path
    engine: EngineProcess
    flow: OrderFlow

    def produce(self, count: int, rate: float | None = None) -> None:
        produce_flow(make_producer(self.bootstrap), Codec(), self.flow, count, rate, ns=self.ns)

    def wait_processed(self, timeout: float = 120) -> None:
        wait_for(lambda: committed_total(self.bootstrap, self.ns, self.engine.group) == input_total(
            self.bootstrap, self.ns), timeout, "the engine to commit the whole input")

    def gateway(self, workers: int = 1, env: dict[str, str] | None = None) -> GatewayProcess:
        return GatewayProcess(self.bootstrap, self.ns, self.log_dir, workers, env)


@pytest.fixture
def log_dir(request: pytest.FixtureRequest, unique: str) -> Path:
    path = load_settings().runtime_dir / "test-logs" / f"{request.node.name}-{unique}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def pipeline(kafka_bootstrap: str, unique: str, log_dir: Path) -> Iterator[Pipeline]:
    """A fresh namespace and a running engine (not fed yet)."""
    ns = fresh_namespace(kafka_bootstrap, f"ws-{unique}")
    engine = EngineProcess(kafka_bootstrap, ns, None, None, log_dir, args=["--batch-size", "200"]).start()
    registry = MarketRegistry.load(load_settings().markets_file)
    flow = OrderFlow([m.spec() for m in registry], seed=int(unique[:6], 16))
    yield Pipeline(kafka_bootstrap, ns, log_dir, engine, flow)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    yield
    while GatewayProcess.started:
        GatewayProcess.started.pop().stop()
    while EngineProcess.started:
        process = EngineProcess.started.pop()
        if process.alive():
            process.kill()
