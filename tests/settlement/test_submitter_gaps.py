"""Reorgs that land while transactions of the submitter are pending (real anvil).

A reorg removes included transactions without re-queueing them: the chain's account nonce drops
below the nonce of a transaction still pending, which then waits on a *nonce gap* and can never be
mined until the gap is filled. These tests build that state for 0, 1 and several pending
transactions, recover with automine on and off, and require every batch to end FINALIZED exactly
once with no fee bump and no ALERT (a transaction above a gap is never bumped)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from connectors.settlement.batcher import Batch
from connectors.settlement.decide import PENDING, State
from connectors.settlement.submitter import Row, Submitter
from tests.settlement.conftest import Stage
from tests.settlement.test_submitter_faults import settled_events

MIN_DEPTH = 24  # nothing finalizes while the test builds its reorgs (each batch takes one block)
BATCH_TRADES = 50
INCLUDED_BEFORE = 5  # batches included before the (first) reorg


def interleaved_batches(stage: Stage) -> list[Batch]:
    """BTC-USD #1, ETH-USD #1, BTC-USD #2, ...: nonce order differs from (market, seq) order."""
    stage.settings = stage.settings.model_copy(update={"settlement_batch_trades": BATCH_TRADES})
    per_market = [stage.batches(stage.trades(4 * BATCH_TRADES, accounts=8, market=m)) for m in ("BTC-USD", "ETH-USD")]
    return [b for pair in zip(*per_market, strict=True) for b in pair]


def state_of(sub: Submitter, b: Batch) -> str:
    return next(r.state for r in sub.rows() if (r.market, r.batch_seq) == (b.market, b.batch_seq))


def step_until(stage: Stage, sub: Submitter, done: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Step (mining one block when the submitter is idle) until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {[(r.market, r.batch_seq, r.state) for r in sub.rows()]}"
        if not sub.step():
            stage.mine(1)


def all_transitions(sub: Submitter) -> list[tuple[str, int, str]]:
    return [(m, int(s), st) for m, s, st in sub.db.execute(
        "select market, batch_seq, state from settlement_transitions where deployment = %s order by id",
        (sub.key,)).fetchall()]


def pending_rows(sub: Submitter) -> list[Row]:
    return [r for r in sub.rows() if r.state in PENDING]


@pytest.fixture
def manual_mining(stage: Stage) -> Iterator[None]:
    stage.rpc("evm_setAutomine", [False])
    try:
        yield
    finally:
        stage.rpc("evm_setAutomine", [True])  # the chain is shared: always restore automine


@pytest.mark.parametrize(("pending", "automine", "depths"), [
    pytest.param(0, True, (2,), id="0-pending-automine-depth-2"),
    pytest.param(0, False, (4,), id="0-pending-manual-depth-4"),
    pytest.param(1, True, (1,), id="1-pending-automine-depth-1"),
    pytest.param(1, False, (3,), id="1-pending-manual-depth-3"),
    pytest.param(3, True, (1, 2, 3), id="3-pending-automine-depths-1-2-3"),
    pytest.param(3, False, (2, 3, 4), id="3-pending-manual-depths-2-3-4"),
])
def test_reorg_with_pending_transactions_resends_in_nonce_order_without_bumps(
        stage: Stage, manual_mining: None, pending: int, automine: bool, depths: tuple[int, ...]) -> None:
    batches = interleaved_batches(stage)
    settings = stage.settings.model_copy(update={"settlement_min_depth": MIN_DEPTH})
    sub = Submitter(settings, stage.deployment, kafka=False).acquire()
    try:
        # Build: INCLUDED_BEFORE batches, one block each, then (if asked) one more sent and left pending.
        for b in batches[:INCLUDED_BEFORE]:
            sub.ingest([b])
            step_until(stage, sub, lambda b=b: state_of(sub, b) == State.INCLUDED, f"{b.market} #{b.batch_seq} included")
        if pending:
            sub.ingest([batches[INCLUDED_BEFORE]])
            assert sub.step() and state_of(sub, batches[INCLUDED_BEFORE]) == State.SUBMITTED
        assert not any(r.state == State.FINALIZED for r in sub.rows())

        # Reorg (several rounds for "several pending": after each one the submitter resends the
        # lowest reorged batch, which stays pending and is stranded above the next, deeper gap).
        for i, depth in enumerate(depths):
            stage.rpc("anvil_reorg", [depth, []])
            if i < len(depths) - 1:
                before = len(pending_rows(sub))
                sub.step()
                assert len(pending_rows(sub)) == before + 1, (
                    f"no resend while a transaction waits on the gap: {[(r.market, r.batch_seq, r.state) for r in sub.rows()]}")
        confirmed = stage.w3.eth.get_transaction_count(sub.operator.address, "latest")
        stranded = pending_rows(sub)
        assert len(stranded) == pending
        assert all(r.nonce is not None and r.nonce > confirmed for r in stranded)  # all wait on the gap

        # Recover.
        if automine:
            stage.rpc("evm_setAutomine", [True])
        tip = stage.w3.eth.block_number
        assert sub.step()  # reorgs detected, and the lowest reorged nonce resent at once
        resent = [r for r in sub.rows() if r.nonce == confirmed and r.state in (*PENDING, State.INCLUDED)]
        assert resent, f"nonce {confirmed} not resent: {[(r.market, r.batch_seq, r.state, r.nonce) for r in sub.rows()]}"
        if not automine:
            assert resent[0].state == State.SUBMITTED and resent[0].sent_block == tip  # the tip, not the fork block
            sub.step()  # no block mined since the resend: nothing may be replaced
            assert sub.counters["bumps"] == 0
        sub.ingest(batches[INCLUDED_BEFORE:])
        stage.drive(sub, lambda: len(sub.rows()) == len(batches) and sub.settled(), timeout=90)

        rows = sub.rows()
        assert [r.state for r in rows] == [State.FINALIZED] * len(batches)
        moves = all_transitions(sub)
        assert not [t for t in moves if t[2] in (State.ALERT, State.REPLACED, State.FAILED)], moves
        for b in batches:
            assert [t[2] for t in moves if t[:2] == (b.market, b.batch_seq)].count(State.FINALIZED) == 1
        assert sub.counters["bumps"] == 0
        # Round i removes d_i blocks, d_(i-1) of them the previous round's empty replacements: the
        # rows reorged add up to the deepest depth, and each of them was resent once.
        assert sub.counters["reorgs"] == sub.counters["resent"] == max(depths)
        events = settled_events(stage)
        assert sorted(events) == sorted(b.batch_hash for b in batches) and len(events) == len(batches)  # once each
        # Every reorged batch was resent at its own nonce: the chain replays the original order.
        nonces = sub.db.execute("select market, batch_seq, count(distinct nonce) from settlement_txs"
                                " where deployment = %s group by market, batch_seq", (sub.key,)).fetchall()
        assert all(n == 1 for _, _, n in nonces), nonces
    finally:
        sub.close()


def test_a_gap_left_by_a_transaction_that_is_not_a_batch_is_filled_with_a_no_op(stage: Stage,
                                                                                manual_mining: None) -> None:
    batches = stage.batches(stage.trades(1000))
    sub = Submitter(stage.settings.model_copy(update={"settlement_min_depth": MIN_DEPTH}), stage.deployment,
                    kafka=False).acquire()
    try:
        operator = sub.operator
        nonce = stage.w3.eth.get_transaction_count(operator.address, "latest")
        other = operator.sign_transaction({"chainId": stage.deployment.chain_id, "nonce": nonce, "to": operator.address,
                                           "value": 0, "gas": 21_000, "maxFeePerGas": 10**10,
                                           "maxPriorityFeePerGas": 10**9, "type": 2})
        stage.w3.eth.send_raw_transaction(other.raw_transaction)  # someone else used the key once
        stage.mine(1)
        sub.ingest(batches)
        assert sub.step() and sub.rows()[0].state == State.SUBMITTED and sub.rows()[0].nonce == nonce + 1
        stage.rpc("anvil_reorg", [1, []])  # the other transaction is gone: nothing of ours holds its nonce
        assert stage.w3.eth.get_transaction_count(operator.address, "latest") == nonce
        assert sub.step()  # the gap is filled...
        assert sub.counters["gap_fills"] == 1 and sub.rows()[0].state == State.SUBMITTED
        assert not sub.step() and sub.counters["gap_fills"] == 1  # ...once, not again before blocks pass
        stage.drive(sub, sub.settled)
        assert sub.counters["bumps"] == 0 and sub.rows()[0].bumps == 0
        assert not [t for t in all_transitions(sub) if t[2] in (State.ALERT, State.REPLACED, State.FAILED)]
        assert settled_events(stage) == [batches[0].batch_hash]
        assert stage.w3.eth.get_transaction_count(operator.address, "latest") == nonce + 2
    finally:
        sub.close()
