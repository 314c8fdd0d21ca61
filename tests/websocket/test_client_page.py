"""The live page (``GET /``) in headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright; no browser download): against a real gateway and engine it shows the engine's best
bid/ask at the engine's book_seq and its last trade, live; its protocol code (CRC32, gap and
checksum verdicts) agrees with the Python client's. A screenshot is saved under the test's
tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from connectors.websocket.checksum import book_checksum
from streams.serde.codec import Codec
from streams.settings import PROJECT_ROOT
from tests.pipeline import XCHG, offline_events
from tests.websocket.conftest import Pipeline
from tests.websocket.gateway import PARTITIONS, engine_books

pytestmark = [pytest.mark.integration]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VENDOR = Path(__file__).resolve().parents[2] / "connectors/websocket/static/vendor/node_modules/lightweight-charts"
MARKET = "BTC-USD"


def last_trade(pipeline: Pipeline, market: str) -> dict[str, Any]:
    trades = []
    for partition in range(PARTITIONS):
        events, _ = offline_events(pipeline.bootstrap, pipeline.ns, partition, Codec())
        trades += [e["body"][1] for e in events if e["market"] == market and e["body"][0] == "xchg.v1.TradeExecuted"]
    return max(trades, key=lambda t: t["trade_id"])


def test_live_page_shows_the_engines_book_and_last_trade(pipeline: Pipeline, tmp_path: Path) -> None:
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: `make chromium` installs it"
    assert VENDOR.is_dir(), "lightweight-charts is missing: `make web-vendor` installs it"
    from playwright.sync_api import sync_playwright

    pipeline.produce(1500)
    pipeline.wait_processed()
    # Candles for the chart: the candle worker turns the trades into md.candles, then exits when idle.
    env = {**os.environ, "EXCHANGE_KAFKA_BOOTSTRAP": pipeline.bootstrap, "EXCHANGE_TOPIC_PREFIX": pipeline.ns.prefix}
    with open(pipeline.log_dir / "marketdata.log", "ab") as log:
        done = subprocess.run([*XCHG, "marketdata", "run", "--idle-exit", "3"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, timeout=180, check=False)
    assert done.returncode == 0, f"the candle worker failed: see {pipeline.log_dir / 'marketdata.log'}"
    gateway = pipeline.gateway().start()
    gateway.wait_ready()
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.goto(f"http://127.0.0.1:{gateway.port}/?market={MARKET}")
            page.wait_for_function("window.xchgPage && window.xchgPage.state === 'live'", timeout=30_000)

            # The page's protocol code agrees with the Python client's rules.
            vector = [(100, 3)], [(101, 5), (102, 7)]
            assert page.evaluate("XchgFeed.bookChecksum([[100, 3]], [[101, 5], [102, 7]])") == book_checksum(*vector)
            verdicts = page.evaluate("""() => {
                const b = new XchgFeed.LocalBook('X'), sum = XchgFeed.bookChecksum;
                const out = [b.apply({book_seq: 5, prev_book_seq: 4, bids: [], asks: [], checksum: 0})];
                out.push(b.apply({snapshot: true, book_seq: 5, prev_book_seq: 0, bids: [[100, 3]], asks: [],
                                  checksum: sum([[100, 3]], [])}));
                out.push(b.apply({book_seq: 7, prev_book_seq: 6, bids: [], asks: [], checksum: sum([[100, 3]], [])}));
                b.apply({snapshot: true, book_seq: 5, prev_book_seq: 0, bids: [[100, 3]], asks: [], checksum: sum([[100, 3]], [])});
                out.push(b.apply({book_seq: 6, prev_book_seq: 5, bids: [[100, 4]], asks: [], checksum: 1}));
                out.push(b.apply({snapshot: true, book_seq: 9, prev_book_seq: 3, bids: [[99, 1.5]], asks: [], checksum: 0}));
                return out;
            }""")
            assert verdicts == ["no_snapshot", "applied", "gap", "checksum_mismatch", "malformed"]

            pipeline.produce(800, 800.0)
            pipeline.wait_processed()
            want = engine_books(pipeline.bootstrap, pipeline.ns)[MARKET]
            trade = last_trade(pipeline, MARKET)
            page.wait_for_function(
                f"xchgPage.bookSeq === {want.book_seq} && xchgPage.lastTradeId === {trade['trade_id']}",
                timeout=30_000)
            shown = page.evaluate("""() => ({
                state: document.getElementById('state').dataset.state,
                bid: document.getElementById('best-bid').dataset.units,
                ask: document.getElementById('best-ask').dataset.units,
                last: document.getElementById('last-trade').dataset.units,
                lastId: document.getElementById('last-trade').dataset.tradeId,
                bookRows: document.querySelectorAll('#book tbody tr').length,
                tapeRows: document.querySelectorAll('#trades tbody tr').length,
                canvases: document.querySelectorAll('#chart canvas').length,
                candles: xchgPage.candles,
                resyncs: xchgPage.resyncs})""")
            assert shown["state"] == "live"
            assert int(shown["bid"]) == want.bids[0][0] and int(shown["ask"]) == want.asks[0][0]
            assert int(shown["last"]) == trade["price"] and int(shown["lastId"]) == trade["trade_id"]
            assert shown["bookRows"] > 0 and shown["tapeRows"] > 0
            assert shown["canvases"] > 0, "lightweight-charts drew no chart"
            assert shown["candles"] > 0, "the chart has no candle from md.candles"
            assert shown["resyncs"] == 0, "the page lost book data on a healthy stream"
            assert page.locator("#best-bid").inner_text() != "-"
            screenshot = tmp_path / "live-page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"\nlive page screenshot: {screenshot}")
            assert screenshot.stat().st_size > 10_000
        finally:
            browser.close()
    assert not problems, problems
