"""Fixtures for crash tests: a clean set of project topics and the load generator in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.loadgen import LoadReport, OrderFlow, produce_flow
from streams.markets import MarketRegistry
from streams.runtime.clients import make_producer
from streams.serde.codec import Codec
from streams.settings import load_settings
from tests.pipeline import fresh_topics


@pytest.fixture
def clean_topics(project_topics: str) -> str:
    fresh_topics(project_topics)
    return project_topics


@pytest.fixture
def codec() -> Codec:
    return Codec()


class Load:
    """The standard order flow, produced in a background thread at a fixed rate."""

    def __init__(self, bootstrap: str, count: int, rate: float | None, seed: int) -> None:
        registry = MarketRegistry.load(load_settings().markets_file)
        self.flow = OrderFlow([m.spec() for m in registry], seed)
        self.producer = make_producer(bootstrap)
        self.count, self.rate = count, rate
        self.report: LoadReport | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.report = produce_flow(self.producer, Codec(), self.flow, self.count, self.rate)

    def start(self) -> Load:
        self.thread.start()
        return self

    def join(self, timeout: float = 120) -> LoadReport:
        self.thread.join(timeout)
        assert self.report is not None, "load generator did not finish"
        return self.report


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
