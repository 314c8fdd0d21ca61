"""The hostile records that once stopped a component, replayed through the real pipeline beside a
normal order flow: the engine, the sink, the candle worker, the settlement batcher and the
submitter all run to completion; each hostile command is refused with its code or reason; the
other markets' trades reach the database, the candles, the settlement batches and the chain.

(One unfunded account reverting a market's settlement batch is the funds check's to prevent, before
matching; it is not replayed here: the accounts that traded are funded before submission.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.settlement.batch_service import BatcherRun, BatchService, read_batches
from connectors.settlement.chain import fund_accounts
from connectors.settlement.decide import State
from streams.domain.commands import OrderType, Place, Side, STPMode, TimeInForce
from streams.domain.events import OrderRejected, RejectCode
from streams.loadgen import OrderFlow, produce_flow
from streams.markets import MarketRegistry
from streams.runtime.clients import make_producer
from streams.runtime.records import command_to_record, event_from_record
from streams.runtime.verify import check_outcomes
from streams.serde.codec import Codec
from streams.serde.topics import (
    DLQ_MARKETDATA,
    DLQ_ORDERS_COMMANDS,
    MD_CANDLES,
    ORDERS_COMMANDS,
    ORDERS_EVENTS,
    SETTLEMENT_BATCHES,
    TRADES,
)
from streams.settings import load_settings
from tests.pipeline import EngineProcess, committed_total, input_total, wait_for
from tests.settlement.conftest import Stage
from tests.sink.conftest import ServiceProcess, create_database, drop_database, read_topic, rows, run_xchg

pytestmark = [pytest.mark.integration, pytest.mark.crash]
HUGE = 9_223_372_036_854_775_800  # a multiple of every lot, just under 2^63


def limit(cid: str, oid: str, account: str, side: Side, price: int, qty: int) -> Place:
    return Place(cid, 0, oid, account, side, OrderType.LIMIT, price, qty, TimeInForce.GTC, False, STPMode.NONE)


def hostile_commands() -> list[tuple[str, Place]]:
    out: list[tuple[str, Place]] = [
        # 1. Two resting sells whose level total passed a long (the engine crash-looped).
        ("BTC-USD", limit("h1-a", "h1-a", "whale", Side.SELL, 10**12, HUGE)),
        ("BTC-USD", limit("h1-b", "h1-b", "whale", Side.SELL, 10**12, HUGE)),
        # 2. A maker and a taker of ~700 KB each (their trade was refused by the broker for ever).
        ("BTC-USD", limit("h2-a", "o" * 350_000, "a" * 350_000, Side.SELL, 10_000_000, 100)),
        ("BTC-USD", limit("h2-b", "p" * 350_000, "b" * 350_000, Side.BUY, 10_000_000, 100)),
        # 4. A trade by an account of 10,000 characters (its row stalled the sink for ever).
        ("SOL-USD", limit("h4-a", "h4-a", "x" * 10_000, Side.SELL, 150_000, 10)),
        # 5. Two trades in one minute whose quantities pass 2^63 (the candle agent died).
        ("ETH-USD", limit("h5-a", "h5-a", "big", Side.SELL, 300_000, HUGE)),
    ]
    # 3. Self-trades walking ETH-USD's price up 9 % at a time (the band followed each trade), then
    # one trade whose token amount passes decimal(38, 0) (the batcher crash-looped).
    price = 300_000
    for i in range(40):
        price = price * 109 // 100
        out.append(("ETH-USD", limit(f"h3-s{i}", f"h3-s{i}", "walker", Side.SELL, price, 1000)))
        out.append(("ETH-USD", limit(f"h3-b{i}", f"h3-b{i}", "walker", Side.BUY, price, 1000)))
    out.append(("ETH-USD", limit("h3-big", "h3-big", "walker", Side.SELL, price, 9 * 10**18)))
    return out


def test_hostile_records_stop_no_component(stage: Stage, unique: str, tmp_path: Path) -> None:
    bootstrap, ns, codec = stage.settings.bootstrap_servers, stage.ns, Codec()
    registry = MarketRegistry.load(load_settings().markets_file)
    producer = make_producer(bootstrap)
    flow = OrderFlow([m.spec() for m in registry], seed=61)
    produce_flow(producer, codec, flow, 3000, None, ns=ns)
    hostile = hostile_commands()
    for market, cmd in hostile:
        producer.produce(ns(ORDERS_COMMANDS), codec.encode(ORDERS_COMMANDS, command_to_record(market, cmd)),
                         market.encode())
    produce_flow(producer, codec, flow, 3000, None, ns=ns)
    assert producer.flush(30) == 0

    engine = EngineProcess(bootstrap, ns, f"g-{unique}", "hostile-1", tmp_path).start()
    total = input_total(bootstrap, ns)
    wait_for(lambda: engine.alive() and committed_total(bootstrap, ns, f"g-{unique}") >= total, 120,
             "the engine to consume every command")
    assert engine.stop() == 0, engine.log_path.read_text()[-3000:]

    outcomes = check_outcomes(bootstrap, codec, ns)
    assert outcomes.missing == [] and outcomes.duplicated == []
    events = [event_from_record(record) for record in read_topic(bootstrap, ns, ORDERS_EVENTS)]
    rejected = {e.order_id: e.reason for e in events if isinstance(e, OrderRejected)}
    assert rejected["h1-a"] is RejectCode.ABOVE_MAX_QTY and rejected["h1-b"] is RejectCode.ABOVE_MAX_QTY
    assert rejected["h5-a"] is RejectCode.ABOVE_MAX_QTY and rejected["h3-big"] is RejectCode.ABOVE_MAX_QTY
    assert RejectCode.PRICE_BAND in {rejected.get(f"h3-s{i}") for i in range(40)}  # the walk hits the collar
    dead = {dict(m.headers() or [])["xchg.error.reason"]
            for m in read_topic(bootstrap, ns, DLQ_ORDERS_COMMANDS, decode=False)}
    assert {b"invalid_order_id", b"invalid_account"} <= dead

    # The sink writes every trade and event; nothing is dead-lettered or stalls it.
    database = create_database(f"xchg_h_{unique}")
    try:
        done = run_xchg(["sink", "timescale", "--until-caught-up"], bootstrap, ns, database)
        assert done.returncode == 0, done.stderr[-2000:]
        trades = read_topic(bootstrap, ns, TRADES)
        assert rows(database.writer, "select count(*) from trades")[0][0] == len(trades) > 0
    finally:
        drop_database(database.name)

    # The candle worker folds every trade and stops cleanly once idle.
    log = tmp_path / "marketdata.log"
    worker = ServiceProcess(["marketdata", "run", "--idle-exit", "3"], bootstrap, ns, log).start()
    assert worker.wait(180) == 0, log.read_text()[-3000:]
    assert read_topic(bootstrap, ns, DLQ_MARKETDATA, decode=False) == []
    last_folded = {}
    for candle in read_topic(bootstrap, ns, MD_CANDLES):
        last_folded[candle["market"]] = max(last_folded.get(candle["market"], 0), candle["last_trade_id"])
    last_trade = {}
    for trade in trades:
        last_trade[trade["market"]] = max(last_trade.get(trade["market"], 0), trade["trade_id"])
    assert last_folded == last_trade

    # The batcher batches every market's trades and refuses nothing.
    emitted = BatchService(stage.settings, stage.deployment, stage.units,
                           BatcherRun(flush_idle_s=0.5, idle_exit_s=1.0)).run()
    assert emitted > 0
    batches = read_batches(bootstrap, ns(SETTLEMENT_BATCHES), codec, stage.deployment.settlement)
    assert {b.market for b in batches} >= {"BTC-USD", "ETH-USD"}
    assert sum(b.trade_count for b in batches) == len(trades)

    # The submitter settles every batch on the chain (the funds check is not there yet: the
    # accounts that traded are funded first, see the module doc).
    fund_accounts(stage.settings, stage.deployment,
                  sorted({t[side] for t in trades for side in ("maker_account", "taker_account")}), stage.assets)
    sub = stage.submitter(kafka=True).acquire()
    try:
        stage.drive(sub, lambda: len(sub.rows()) == len(batches) and sub.settled(), timeout=240)
        states = {(r.market, r.batch_seq): r.state for r in sub.rows()}
    finally:
        sub.close()
    assert set(states.values()) == {State.FINALIZED}, states
