"""Fan-out: 1,000 concurrent connections in 4 client processes follow the books and trades of
every market while the engine processes a seeded flow; at the end each client's book equals the
engine's book at the same book_seq (an offline replay of the input) and each saw every trade id of
its market exactly once, in order."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from typing import Any

import orjson
import pytest

from streams.serde.codec import Codec
from streams.settings import PROJECT_ROOT
from tests.pipeline import offline_events
from tests.websocket.conftest import Pipeline
from tests.websocket.gateway import PARTITIONS, engine_books

pytestmark = [pytest.mark.integration]
MARKETS = ["BTC-USD", "ETH-USD", "SOL-USD", "ETH-BTC"]
PROCESSES, PER_PROCESS = 4, 250


def trades_per_market(pipeline: Pipeline) -> Counter[str]:
    counts: Counter[str] = Counter()
    for partition in range(PARTITIONS):
        events, _ = offline_events(pipeline.bootstrap, pipeline.ns, partition, Codec())
        counts.update(e["market"] for e in events if e["body"][0] == "xchg.v1.TradeExecuted")
    return counts


def test_thousand_clients_see_the_engines_book_and_every_trade_once(pipeline: Pipeline) -> None:
    gateway = pipeline.gateway(workers=2).start()
    gateway.wait_ready()
    clients = [subprocess.Popen([sys.executable, "-m", "tests.websocket.fanout_client", gateway.url, ",".join(MARKETS),
                                 str(PER_PROCESS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=PROJECT_ROOT)
               for _ in range(PROCESSES)]
    try:
        for client in clients:
            assert client.stdout is not None
            ready = orjson.loads(client.stdout.readline() or b"{}")
            assert ready.get("ready") == PER_PROCESS, f"a client process connected {ready}"
        pipeline.produce(4000, 2000.0)
        pipeline.wait_processed()
        books = engine_books(pipeline.bootstrap, pipeline.ns)
        trades = trades_per_market(pipeline)
        expected: dict[str, Any] = {m: {"book_seq": books[m].book_seq, "bids": [list(x) for x in books[m].bids],
                                        "asks": [list(x) for x in books[m].asks], "trades": trades[m]}
                                    for m in MARKETS}
        assert all(trades[m] > 0 for m in MARKETS)
        line = orjson.dumps(expected) + b"\n"
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(line)
            client.stdin.flush()
        for client in clients:
            assert client.stdout is not None
            result = orjson.loads(client.stdout.readline() or b"{}")
            assert result.get("ok") == PER_PROCESS, f"client failures: {result}"
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
            client.wait(30)
