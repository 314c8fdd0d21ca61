"""Test helpers: a real ``xchg ws serve`` process, a seeded pipeline run, a reference book client.

The clients use the ``websockets`` library directly (not the project's future client library).
Every wait is on an observable condition with a deadline (``tests.pipeline.wait_for``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from connectors.websocket.checksum import book_checksum
from streams.domain.commands import Side
from streams.runtime.namespace import Namespace
from streams.serde.codec import Codec
from streams.settings import PROJECT_ROOT
from tests.pipeline import XCHG, offline_events, wait_for

PARTITIONS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


class GatewayProcess:
    """``xchg ws serve`` in its own process group on a free port, for one namespace."""

    started: list[GatewayProcess] = []  # noqa: RUF012 - a registry for the cleanup fixture

    def __init__(self, bootstrap: str, ns: Namespace, log_dir: Path, workers: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.workers = workers
        self.log_path = log_dir / f"gateway-{self.port}.log"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_WS_")}
        self.env = {**inherited, "EXCHANGE_KAFKA_BOOTSTRAP": bootstrap, "EXCHANGE_TOPIC_PREFIX": ns.prefix,
                    "EXCHANGE_WS_PORT": str(self.port), "EXCHANGE_METRICS_PORT": "0", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        GatewayProcess.started.append(self)

    def start(self) -> GatewayProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*XCHG, "ws", "serve", "--workers", str(self.workers)], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                         start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> tuple[int, Any]:
        return http_get(self.port, path)

    def wait_serving(self, timeout: float = 60) -> None:
        def serving() -> bool:
            assert self.alive(), f"gateway exited: see {self.log_path}"
            try:
                return self.get("/healthz")[0] == 200
            except OSError:
                return False

        wait_for(serving, timeout, "the gateway to answer /healthz")

    def wait_ready(self, timeout: float = 90) -> None:
        self.wait_serving(timeout)

        def ready() -> bool:
            assert self.alive(), f"gateway exited: see {self.log_path}"
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout, "the gateway to be ready")

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"


@dataclass
class BookReplica:
    """A client's book built from ``book`` messages by the protocol's rules; raises on a broken
    chain or a checksum mismatch."""

    market: str
    depth: int | None = None
    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)
    book_seq: int = -1
    snapshots: int = 0
    updates: int = 0

    def apply(self, message: dict[str, Any]) -> None:
        assert message["type"] == "book" and message["market"] == self.market
        if message["snapshot"]:
            self.bids, self.asks = {}, {}
            self.snapshots += 1
        else:
            assert self.book_seq >= 0, "an update before the first snapshot"
            assert message["prev_book_seq"] == self.book_seq, (
                f"{self.market}: chain broken: prev {message['prev_book_seq']} after {self.book_seq}")
            self.updates += 1
        for side, levels in ((self.bids, message["bids"]), (self.asks, message["asks"])):
            for price, qty in levels:
                assert isinstance(price, int) and isinstance(qty, int)
                if qty == 0:
                    side.pop(price, None)
                else:
                    side[price] = qty
        if self.depth is not None:
            self.bids = dict(self.best_bids()[: self.depth])
            self.asks = dict(self.best_asks()[: self.depth])
        self.book_seq = message["book_seq"]
        assert book_checksum(self.best_bids(), self.best_asks()) == message["checksum"], (
            f"{self.market}: checksum mismatch at book_seq {self.book_seq}")

    def best_bids(self) -> list[tuple[int, int]]:
        return sorted(self.bids.items(), reverse=True)

    def best_asks(self) -> list[tuple[int, int]]:
        return sorted(self.asks.items())


@dataclass(frozen=True)
class EngineBook:
    market: str
    book_seq: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]


def engine_books(bootstrap: str, ns: Namespace) -> dict[str, EngineBook]:
    """Every market's book as an uninterrupted offline engine has it after the whole input."""
    codec = Codec()
    out: dict[str, EngineBook] = {}
    for partition in range(PARTITIONS):
        _, state = offline_events(bootstrap, ns, partition, codec)
        for market, engine in state.engines.items():
            out[market] = EngineBook(market, engine.seq, list(engine.book_levels(Side.BUY)),
                                     list(engine.book_levels(Side.SELL)))
    return out
