"""Trades on Kafka → batcher → settlement.batches → submitter → anvil; balances and reconciliation."""

from __future__ import annotations

from collections import defaultdict

from connectors.settlement.batch_service import BatcherRun, BatchService, read_batches
from connectors.settlement.batcher import trade_deltas
from connectors.settlement.decide import State
from connectors.settlement.reconcile import balances, reconcile
from streams.runtime.reader import read_range, standalone_consumer, watermarks
from streams.serde.codec import Codec
from streams.serde.topics import SETTLEMENT_BATCHES, SETTLEMENT_STATUS
from tests.settlement.conftest import Stage


def _run_batcher(stage: Stage, group: str) -> int:
    run = BatcherRun(group=group, transactional_id=group, flush_idle_s=0.5, idle_exit_s=1.0)
    return BatchService(stage.settings, stage.deployment, stage.units, run).run()


def _status_states(stage: Stage) -> list[str]:
    codec = Codec()
    consumer = standalone_consumer(stage.settings.bootstrap_servers)
    topic = stage.ns(SETTLEMENT_STATUS)
    out = []
    try:
        for p in range(4):
            low, high = watermarks(consumer, topic, p)
            out.extend(codec.decode(SETTLEMENT_STATUS, m.value())["state"] for m in read_range(consumer, topic, p, low, high))
    finally:
        consumer.close()
    return out


def test_ten_thousand_trades_settle_in_ten_batches_and_balances_match(stage: Stage) -> None:
    trades = stage.trades(10_000, accounts=20)
    stage.produce_trades(trades)
    before = balances(stage.settings, stage.deployment, sorted({a for t in trades for a in (t.buyer, t.seller)}
                                                               | {stage.settings.settlement_fee_account}))

    group = f"{stage.ns.prefix}batcher"
    assert _run_batcher(stage, group) == 10
    assert _run_batcher(stage, group) == 0  # restart: everything already emitted, nothing twice
    codec = Codec()
    batches = read_batches(stage.settings.bootstrap_servers, stage.ns(SETTLEMENT_BATCHES), codec,
                           stage.deployment.settlement)
    assert batches == stage.batches(trades)  # the topic holds exactly the pure replay's batches
    assert [b.trade_count for b in batches] == [1000] * 10

    sub = stage.submitter(kafka=True).acquire()
    try:
        stage.drive(sub, lambda: len(sub.rows()) == 10 and sub.settled(), timeout=120)
        rows = sub.rows()
    finally:
        sub.close()
    assert [r.state for r in rows] == [State.FINALIZED] * 10
    assert all(r.gas_used and r.gas_used < 4_000_000 for r in rows)

    expected: dict[tuple[str, str], int] = defaultdict(int)
    for t in trades:
        for a, s, v in trade_deltas(t, stage.units[t.market], stage.config()):
            expected[(a, s)] += v
    after = balances(stage.settings, stage.deployment, sorted({a for a, _ in before}))
    for key, value in after.items():
        assert value - before[key] == expected.get(key, 0), key

    report = reconcile(stage.settings, stage.deployment, stage.units)
    assert report.ok, report.text()
    assert report.events == 10 and report.trades_settled == 10_000 and report.final_events == 10
    states = _status_states(stage)
    assert states.count("FINALIZED") == 10 and states.count("BUILT") == 10


def test_batcher_restart_with_an_open_batch_reforms_the_uninterrupted_batches(stage: Stage) -> None:
    trades = stage.trades(3000, fund=False)
    group = f"{stage.ns.prefix}batcher"
    stage.produce_trades(trades[:1500])
    run = BatcherRun(group=group, transactional_id=group, flush_idle_s=None, idle_exit_s=1.0)
    assert BatchService(stage.settings, stage.deployment, stage.units, run).run() == 1  # 1..1000; 1001..1500 open
    stage.produce_trades(trades[1500:])
    assert _run_batcher(stage, group) == 2  # restart: re-reads the open batch from its first trade
    batches = read_batches(stage.settings.bootstrap_servers, stage.ns(SETTLEMENT_BATCHES), Codec(),
                           stage.deployment.settlement)
    assert batches == stage.batches(trades)
    assert [(b.first_trade_id, b.last_trade_id) for b in batches] == [(1, 1000), (1001, 2000), (2001, 3000)]


def test_a_new_deployment_batches_afresh_beside_the_old_one(stage: Stage) -> None:
    from connectors.settlement.chain import deploy

    trades = stage.trades(1200, fund=False)
    stage.produce_trades(trades)
    old = stage.deployment
    assert BatchService(stage.settings, old, stage.units, BatcherRun(flush_idle_s=0.3, idle_exit_s=0.8)).run() == 2
    stage.deployment = deploy(stage.settings, stage.assets)  # e.g. a restarted dev chain
    assert BatchService(stage.settings, stage.deployment, stage.units,
                        BatcherRun(flush_idle_s=0.3, idle_exit_s=0.8)).run() == 2
    topic = stage.ns(SETTLEMENT_BATCHES)
    new_batches = read_batches(stage.settings.bootstrap_servers, topic, Codec(), stage.deployment.settlement)
    old_batches = read_batches(stage.settings.bootstrap_servers, topic, Codec(), old.settlement)
    assert new_batches == stage.batches(trades)
    assert [(b.first_trade_id, b.last_trade_id) for b in old_batches] == [(1, 1000), (1001, 1200)]
    assert {b.batch_hash for b in old_batches}.isdisjoint(b.batch_hash for b in new_batches)


def test_reconciliation_reports_every_mismatch(stage: Stage) -> None:
    import dataclasses

    from connectors.settlement.batcher import ZERO32

    trades = stage.trades(2000)
    batches = stage.batches(trades)
    stage.produce_trades(trades)
    sub = stage.submitter().acquire()
    try:
        sub.ingest(batches[:1])
        stage.drive(sub, lambda: sub.settled())
    finally:
        sub.close()
    # The topic holds batch 1 with a forged root (its event still carries the true one) and a
    # batch 2 whose deltas were tampered with and whose chaining is broken.
    forged = dataclasses.replace(batches[0], merkle_root=b"\x01" * 32)
    deltas = ((batches[1].deltas[0][0], batches[1].deltas[0][1], batches[1].deltas[0][2] + 1), *batches[1].deltas[1:])
    tampered = dataclasses.replace(batches[1], deltas=deltas, prev_batch_hash=ZERO32)
    stage.produce_batches([forged, tampered])
    report = reconcile(stage.settings, stage.deployment, stage.units)
    text = "\n".join(report.mismatches)
    assert not report.ok
    assert "BTC-USD batch 1 (1..1000): Merkle root differs from the trade log's" in text
    assert "BTC-USD batch 1 (1..1000): batch_hash does not match its contents" in text
    assert "differs from the batch record" in text  # the on-chain event vs the forged record
    assert "BTC-USD batch 2 (1001..2000): prev_batch_hash does not chain" in text
    assert "BTC-USD batch 2 (1001..2000): net deltas differ from the trade log's" in text
    assert report.events == 1 and report.balances_checked > 0
