"""``xchg ws watch MARKET`` against a real gateway: it renders the engine's book (best levels with
the market's decimals), the connection state and a summary line with the book_seq it reached."""

from __future__ import annotations

import os
import subprocess

import pytest

from streams.markets import MarketRegistry
from streams.settings import PROJECT_ROOT, load_settings
from tests.pipeline import XCHG
from tests.websocket.conftest import Pipeline
from tests.websocket.gateway import engine_books

pytestmark = [pytest.mark.integration]


def test_watch_renders_the_engines_book(pipeline: Pipeline) -> None:
    pipeline.produce(1500)
    pipeline.wait_processed()
    gateway = pipeline.gateway().start()
    gateway.wait_ready()
    want = engine_books(pipeline.bootstrap, pipeline.ns)["BTC-USD"]
    spec = MarketRegistry.load(load_settings().markets_file).get("BTC-USD")
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run([*XCHG, "ws", "watch", "BTC-USD", "--url", f"http://127.0.0.1:{gateway.port}",
                           "--seconds", "6"], capture_output=True, text=True, timeout=60, env=env, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"BTC-USD: live, book_seq {want.book_seq}," in out, out[-2000:]
    assert "BTC-USD  live" in out
    assert str(spec.price(want.bids[0][0])) in out and str(spec.price(want.asks[0][0])) in out
    assert "ticker: bid" in out
    unknown = subprocess.run([*XCHG, "ws", "watch", "NOPE-USD", "--seconds", "1"], capture_output=True, text=True,
                             timeout=60, cwd=PROJECT_ROOT)
    assert unknown.returncode != 0 and "unknown market" in unknown.stderr
