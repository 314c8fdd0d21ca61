"""Fixtures for crash tests: a clean set of project topics and the load generator in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.loadgen import LoadReport, OrderFlow, produce_flow
from streams.markets import MarketRegistry
from streams.runtime.clients import make_producer
from streams.runtime.namespace import Namespace
from streams.serde.codec import Codec
from streams.settings import load_settings
from tests.pipeline import EngineProcess, fresh_namespace


@dataclass(frozen=True)
class Stage:
    """A test's own topics (a namespace) on the shared broker, and its consumer group."""

    bootstrap: str
    ns: Namespace
    group: str


@pytest.fixture
def stage(kafka_bootstrap: str, unique: str) -> Stage:
    return Stage(kafka_bootstrap, fresh_namespace(kafka_bootstrap, unique), f"g-{unique}")


@pytest.fixture
def codec() -> Codec:
    return Codec()


class Load:
    """The standard order flow, produced in a background thread at a fixed rate."""

    def __init__(self, stage: Stage, count: int, rate: float | None, seed: int) -> None:
        registry = MarketRegistry.load(load_settings().markets_file)
        self.flow = OrderFlow([m.spec() for m in registry], seed)
        self.producer = make_producer(stage.bootstrap)
        self.ns = stage.ns
        self.count, self.rate = count, rate
        self.report: LoadReport | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.report = produce_flow(self.producer, Codec(), self.flow, self.count, self.rate, ns=self.ns)

    def start(self) -> Load:
        self.thread.start()
        return self

    def join(self, timeout: float = 120) -> LoadReport:
        self.thread.join(timeout)
        assert self.report is not None, "load generator did not finish"
        return self.report


@pytest.fixture
def log_dir(request: pytest.FixtureRequest, unique: str) -> Iterator[Path]:
    """Engine logs under the runtime folder (kept after the session, unlike pytest's tmp dirs)."""
    path = load_settings().runtime_dir / "test-logs" / f"{request.node.name}-{unique}"
    path.mkdir(parents=True, exist_ok=True)
    yield path


@pytest.fixture(autouse=True)
def no_leftover_engines() -> Iterator[None]:
    """A test that fails midway must not leave engine processes running into the next one."""
    yield
    while EngineProcess.started:
        process = EngineProcess.started.pop()
        if process.alive():
            process.kill()
