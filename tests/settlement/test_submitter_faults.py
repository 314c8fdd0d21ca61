"""Submitter under faults on a real anvil: reorg, gas spike, replay of a settled batch, a revert."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eth_hash.auto import keccak

from connectors.settlement.batcher import onchain_deltas
from connectors.settlement.chain import decode_revert, fund_accounts, operator_account
from connectors.settlement.decide import State
from connectors.settlement.economics import market_id
from connectors.settlement.reconcile import reconcile
from connectors.settlement.submitter import Submitter, resume_market
from tests.settlement.conftest import Stage

MARKET = "BTC-USD"


def settled_events(stage: Stage) -> list[bytes]:
    from connectors.settlement.chain import settlement_contract

    contract = settlement_contract(stage.w3, stage.deployment.settlement)
    logs = contract.events.BatchSettled.get_logs(from_block=stage.deployment.deploy_block)
    return [bytes(e["args"]["batchHash"]) for e in sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"]))]


def transitions(sub: Submitter, batch_seq: int) -> list[str]:
    return [r[0] for r in sub.db.execute(
        "select state from settlement_transitions where deployment = %s and batch_seq = %s order by id",
        (sub.key, batch_seq)).fetchall()]


def last_settled(stage: Stage) -> int:
    from connectors.settlement.chain import settlement_contract

    return int(settlement_contract(stage.w3, stage.deployment.settlement).functions.lastSettledSeq(
        market_id(MARKET)).call())


@pytest.fixture
def submitter(stage: Stage) -> Iterator[Submitter]:
    sub = stage.submitter().acquire()
    yield sub
    sub.close()


def test_reorg_removes_an_included_batch_which_is_resubmitted_and_settled_once(stage: Stage,
                                                                               submitter: Submitter) -> None:
    trades = stage.trades(2000)
    batches = stage.batches(trades)
    stage.produce_trades(trades)
    stage.produce_batches(batches)  # for the reconciliation; the submitter gets them directly
    submitter.ingest(batches[:1])
    stage.drive(submitter, lambda: submitter.rows()[0].state == State.INCLUDED, mine=False)
    row = submitter.rows()[0]
    assert row.block_number is not None
    stage.mine(2)  # the batch is a few blocks deep when the chain reorganises
    depth = stage.w3.eth.block_number - row.block_number + 1
    stage.rpc("anvil_reorg", [depth, []])
    assert submitter._receipt(row.tx_hash) is None
    assert last_settled(stage) == 0
    stage.drive(submitter, lambda: submitter.settled())
    assert State.REORGED in transitions(submitter, 1)
    assert transitions(submitter, 1)[-3:] == [State.SUBMITTED, State.INCLUDED, State.FINALIZED]
    assert submitter.counters["reorgs"] == 1 and submitter.counters["resent"] == 1
    submitter.ingest(batches[1:])  # the next batch chains onto the resubmitted one
    stage.drive(submitter, lambda: submitter.settled())
    assert [r.state for r in submitter.rows()] == [State.FINALIZED, State.FINALIZED]
    assert settled_events(stage) == [b.batch_hash for b in batches]  # each batch exactly once
    assert last_settled(stage) == 2000
    report = reconcile(stage.settings, stage.deployment, stage.units)
    assert report.ok, report.text()
    assert report.events == 2 and report.trades_settled == 2000


def test_gas_spike_replaces_the_pending_transaction_with_higher_fees(stage: Stage) -> None:
    settings = stage.settings.model_copy(update={"settlement_replace_after_blocks": 1})
    sub = Submitter(settings, stage.deployment, kafka=False).acquire()
    base_before = int(stage.w3.eth.get_block("latest")["baseFeePerGas"])
    batches = stage.batches(stage.trades(1000))
    sub.ingest(batches)
    stage.rpc("evm_setAutomine", [False])
    try:
        stage.drive(sub, lambda: sub.rows()[0].state == State.SUBMITTED, mine=False)
        first = sub.rows()[0]
        assert first.max_fee_per_gas is not None
        spike = 50 * 10**9
        assert first.max_fee_per_gas < spike
        stage.rpc("anvil_setNextBlockBaseFeePerGas", [hex(spike)])
        stage.mine()
        assert sub._receipt(first.tx_hash) is None  # priced out of the spiked block
        stage.drive(sub, lambda: sub.rows()[0].state == State.REPLACED)  # (blocks keep coming; none can include it)
        replaced = sub.rows()[0]
        assert replaced.bumps >= 1 and replaced.max_fee_per_gas is not None
        assert replaced.max_fee_per_gas >= first.max_fee_per_gas * 9 // 8
        stage.drive(sub, lambda: sub.rows()[0].state == State.INCLUDED)
        receipt = stage.w3.eth.get_transaction_receipt(sub.rows()[0].tx_hash)
        assert receipt["effectiveGasPrice"] > first.max_fee_per_gas
    finally:
        stage.rpc("evm_setAutomine", [True])
        stage.rpc("anvil_setNextBlockBaseFeePerGas", [hex(base_before)])
        stage.mine()
    stage.drive(sub, lambda: sub.settled())
    bumps = sub.rows()[0].bumps
    print(f"gas spike: {bumps} fee bump(s), counters {sub.counters}")
    assert bumps == sub.counters["bumps"] >= 1
    assert settled_events(stage) == [batches[0].batch_hash]
    sub.close()


def test_fee_cap_reached_is_an_alert(stage: Stage) -> None:
    settings = stage.settings.model_copy(update={"settlement_replace_after_blocks": 1,
                                                 "settlement_max_fee_wei": 3 * 10**9})
    sub = Submitter(settings, stage.deployment, kafka=False).acquire()
    base_before = int(stage.w3.eth.get_block("latest")["baseFeePerGas"])
    sub.ingest(stage.batches(stage.trades(1000)))
    stage.rpc("evm_setAutomine", [False])
    try:
        stage.drive(sub, lambda: sub.rows()[0].state == State.SUBMITTED, mine=False)
        stage.rpc("anvil_setNextBlockBaseFeePerGas", [hex(50 * 10**9)])
        stage.mine()
        stage.drive(sub, lambda: sub.rows()[0].state == "ALERT", mine=False)
        assert "cap" in (sub.db.execute("select reason from settlement_batches where deployment = %s",
                                        (sub.key,)).fetchone() or [""])[0]
    finally:
        stage.rpc("evm_setAutomine", [True])
        stage.rpc("anvil_setNextBlockBaseFeePerGas", [hex(base_before)])
        stage.mine()
        sub.close()


def test_replaying_a_settled_batch_reverts_on_chain_and_counts_as_success_after_check(stage: Stage,
                                                                                     submitter: Submitter) -> None:
    batches = stage.batches(stage.trades(1000))
    submitter.ingest(batches)
    stage.drive(submitter, lambda: submitter.settled())
    b = batches[0]
    contract = submitter.contract
    args = [market_id(MARKET), b.first_trade_id, b.last_trade_id, b.prev_batch_hash, b.merkle_root,
            onchain_deltas(b.deltas, stage.chain())]
    # The raw replay is refused on chain with the custom error BatchAlreadySettled...
    operator = operator_account(stage.settings)
    tx = {"chainId": stage.deployment.chain_id, "to": contract.address, "value": 0, "gas": 3_000_000,
          "nonce": stage.w3.eth.get_transaction_count(operator.address), "type": 2,
          "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9, "data": contract.encode_abi("settleBatch", args)}
    receipt = stage.w3.eth.wait_for_transaction_receipt(
        stage.w3.eth.send_raw_transaction(operator.sign_transaction(tx).raw_transaction))
    assert receipt["status"] == 0
    with pytest.raises(Exception) as refused:
        contract.functions.settleBatch(*args).call({"from": operator.address})
    decoded = decode_revert(getattr(refused.value, "data", refused.value.args))
    assert decoded is not None and decoded[0] == "BatchAlreadySettled"
    # ...and a submitter that lost its state (fresh rows) treats the same batch as settled after checking.
    submitter.db.execute("delete from settlement_batches where deployment = %s", (submitter.key,))
    submitter.db.execute("delete from settlement_txs where deployment = %s", (submitter.key,))
    submitter.ingest(batches)
    stage.drive(submitter, lambda: submitter.settled())
    reason = submitter.db.execute("select reason from settlement_transitions t join settlement_batches b using"
                                  " (deployment, market, batch_seq) where deployment = %s and t.state = 'INCLUDED'"
                                  " order by t.id desc limit 1", (submitter.key,)).fetchone()
    assert submitter.counters["already_settled"] == 1
    assert submitter.rows()[0].state == State.FINALIZED and submitter.rows()[0].tx_hash == bytes(
        settled_events_tx(stage)[0])
    assert reason is not None
    assert settled_events(stage) == [b.batch_hash]  # settled once, replay changed nothing
    assert last_settled(stage) == 1000
    assert keccak(b"BatchAlreadySettled(bytes32,uint64,uint64)")[:4] in {keccak(s)[:4] for s in [
        b"BatchAlreadySettled(bytes32,uint64,uint64)"]}


def settled_events_tx(stage: Stage) -> list[bytes]:
    from connectors.settlement.chain import settlement_contract

    contract = settlement_contract(stage.w3, stage.deployment.settlement)
    return [bytes(e["transactionHash"]) for e in
            contract.events.BatchSettled.get_logs(from_block=stage.deployment.deploy_block)]


def test_revert_fails_the_batch_halts_the_market_until_resumed(stage: Stage, submitter: Submitter) -> None:
    trades = stage.trades(1000, fund=False)  # nobody deposited: the deltas overdraw
    batches = stage.batches(trades)
    submitter.ingest(batches)
    stage.drive(submitter, lambda: submitter.rows()[0].state == State.FAILED, mine=False)
    assert submitter.halted() == {MARKET}
    assert not submitter.step()  # halted: nothing is sent
    reason = submitter.db.execute("select reason from settlement_halts where deployment = %s",
                                  (submitter.key,)).fetchone()
    assert reason is not None and "InsufficientBalance" in reason[0]
    u = stage.units[MARKET]
    fund_accounts(stage.settings, stage.deployment, sorted({a for t in trades for a in (t.buyer, t.seller)}),
                  stage.assets, symbols=(u.base, u.quote))
    assert resume_market(stage.settings, stage.deployment, MARKET) == 1
    stage.drive(submitter, lambda: submitter.settled())
    assert settled_events(stage) == [batches[0].batch_hash]


def test_one_sender_per_key_and_a_fenced_zombie_cannot_write(stage: Stage, submitter: Submitter) -> None:
    from connectors.settlement.errors import SettlementError
    from connectors.settlement.submitter import Fenced

    submitter.ingest(stage.batches(stage.trades(1000, fund=False)))
    second = stage.submitter()
    with pytest.raises(SettlementError, match="another submitter holds"):
        second.acquire()
    second.close()
    # The first one loses its lock (e.g. its session died) while still running: a new holder takes
    # over with a higher epoch, and every write of the old one is refused.
    assert submitter.lock_db is not None
    submitter.lock_db.close()
    submitter.lock_db = None
    third = stage.submitter().acquire()
    assert third.epoch == submitter.epoch + 1
    with pytest.raises(Fenced):
        submitter.step()
    assert submitter.rows()[0].state == "BUILT" and not submitter.halted()
    assert submitter.db.execute("select count(*) from settlement_txs where deployment = %s",
                                (submitter.key,)).fetchone() == (0,)
    third.close()


def status_records(stage: Stage, batch_seq: int) -> list[dict[str, object]]:
    from streams.serde.topics import SETTLEMENT_STATUS
    from tests.sink.conftest import read_topic

    return [r for r in read_topic(stage.settings.bootstrap_servers, stage.ns, SETTLEMENT_STATUS)
            if r["batch_seq"] == batch_seq]


def test_resume_is_a_transition_with_its_row_status_record_and_epoch_check(stage: Stage) -> None:
    from connectors.settlement.ledger import Fenced, Ledger
    from streams.serde.codec import Codec
    from tests.settlement.test_demo_and_cli import _xchg

    trades = stage.trades(1000, fund=False)  # nobody deposited: the deltas overdraw
    batches = stage.batches(trades)
    first = stage.submitter(kafka=True).acquire()
    first.ingest(batches)
    stage.drive(first, lambda: first.rows()[0].state == State.FAILED, mine=False)
    assert [r["state"] for r in status_records(stage, 1)] == [State.BUILT, State.FAILED]

    # The operator read the sender's epoch, then another submitter took the sender over: the
    # operator's resume is refused and changes nothing.
    operator = Ledger(stage.settings.writer_dsn(), stage.deployment.settlement, stage.deployment.operator, Codec())
    operator.observe()
    first.close()
    second = stage.submitter(kafka=True).acquire()
    try:
        with pytest.raises(Fenced):
            operator.resume(MARKET)
        operator.close()
        assert second.rows()[0].state == State.FAILED and second.halted() == {MARKET}
        assert transitions(second, 1)[-1] == State.FAILED

        u = stage.units[MARKET]
        fund_accounts(stage.settings, stage.deployment, sorted({a for t in trades for a in (t.buyer, t.seller)}),
                      stage.assets, symbols=(u.base, u.quote))
        resumed = _xchg(stage, "resume", MARKET)
        assert resumed.returncode == 0, resumed.stderr
        assert "1 batch(es) re-queued" in resumed.stdout

        # FAILED -> BUILT as a transition: the batch row, its transition row, the status record.
        assert second.rows()[0].state == State.BUILT and not second.halted()
        assert transitions(second, 1)[-2:] == [State.FAILED, State.BUILT]
        assert second.db.execute("select reason from settlement_batches where deployment = %s",
                                 (second.key,)).fetchone() == ("resumed by operator",)
        assert second.db.execute("select count(*) from settlement_transitions where deployment = %s"
                                 " and not emitted", (second.key,)).fetchone() == (0,)
        resume = status_records(stage, 1)[-1]
        assert (resume["state"], resume["reason"]) == (State.BUILT, "resumed by operator")
        assert [r["state"] for r in status_records(stage, 1)] == [State.BUILT, State.FAILED, State.BUILT]

        # The submitter that holds the sender goes on and settles the re-queued batch, once.
        stage.drive(second, lambda: second.settled())
        assert settled_events(stage) == [batches[0].batch_hash]
        states = [r["state"] for r in status_records(stage, 1)]
        assert states[-3:] == [State.SUBMITTED, State.INCLUDED, State.FINALIZED]
        assert states == transitions(second, 1)
        again = _xchg(stage, "resume", MARKET)
        assert again.returncode == 1 and "is not halted" in again.stderr
    finally:
        second.close()
