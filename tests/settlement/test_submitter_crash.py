"""A real ``xchg settle run`` process SIGKILLed around the broadcast of a batch; after a restart no
batch is lost or applied twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import pytest
from web3.exceptions import TransactionNotFound

from connectors.settlement.chain import settlement_contract
from connectors.settlement.reconcile import reconcile
from streams.settings import PROJECT_ROOT
from tests.pipeline import wait_for
from tests.settlement.conftest import Stage


def _start(stage: Stage, log_name: str, crash_point: str | None = None) -> subprocess.Popen[bytes]:
    s = stage.settings
    assert s.database_url is not None and s.settlement_deployment_file is not None
    env = {**os.environ, "EXCHANGE_TOPIC_PREFIX": s.topic_prefix, "EXCHANGE_KAFKA_BOOTSTRAP": s.bootstrap_servers,
           "EXCHANGE_RPC_URL": s.chain_rpc_url, "EXCHANGE_DATABASE_URL": s.database_url.get_secret_value(),
           "EXCHANGE_SETTLEMENT_DEPLOYMENT_FILE": str(s.settlement_deployment_file),
           "EXCHANGE_SETTLEMENT_MIN_DEPTH": str(s.settlement_min_depth)}
    env.pop("EXCHANGE_CRASH_POINT", None)
    if crash_point:
        env["EXCHANGE_CRASH_POINT"] = crash_point
    log = open(stage.tmp / log_name, "wb")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "settle", "run"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)


def _rows(stage: Stage) -> list[tuple[int, str, bytes | None]]:
    assert stage.settings.database_url is not None
    with psycopg.connect(stage.settings.database_url.get_secret_value()) as db:
        return [(int(seq), state, bytes(tx) if tx else None) for seq, state, tx in db.execute(
            "select batch_seq, state, tx_hash from settlement_batches where deployment = %s order by batch_seq",
            (stage.deployment.settlement,)).fetchall()]


def _tx_count(stage: Stage, batch_seq: int) -> int:
    assert stage.settings.database_url is not None
    with psycopg.connect(stage.settings.database_url.get_secret_value()) as db:
        row = db.execute("select count(*) from settlement_txs where deployment = %s and batch_seq = %s",
                         (stage.deployment.settlement, batch_seq)).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("crash_point", ["settle-after-send", "settle-before-send"])
def test_sigkill_between_send_and_receipt_loses_nothing_and_settles_once(stage: Stage, crash_point: str) -> None:
    trades = stage.trades(2000)
    batches = stage.batches(trades)
    stage.produce_trades(trades)
    stage.produce_batches(batches)

    first = _start(stage, "run-1.log", crash_point)
    try:
        assert first.wait(90) == -signal.SIGKILL, (stage.tmp / "run-1.log").read_text()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    rows = _rows(stage)
    assert rows[0][1] == "SUBMITTED" and rows[0][2] is not None  # written ahead, then killed
    tx_hash = rows[0][2]

    def known() -> bool:
        try:
            stage.w3.eth.get_transaction(tx_hash)
        except TransactionNotFound:
            return False
        return True

    if crash_point == "settle-after-send":  # broadcast, then killed: the chain has it
        wait_for(known, 10, "the broadcast transaction to reach the node")
    else:  # killed after the write-ahead record, before the broadcast
        assert not known()

    second = _start(stage, "run-2.log")
    try:
        def settled() -> bool:
            assert second.poll() is None, (stage.tmp / "run-2.log").read_text()[-2000:]
            states = [r[1] for r in _rows(stage)]
            if states == ["FINALIZED", "FINALIZED"]:
                return True
            stage.mine(2)
            return False

        wait_for(settled, 120, "both batches to finalize after the restart", interval=0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)

    contract = settlement_contract(stage.w3, stage.deployment.settlement)
    events = contract.events.BatchSettled.get_logs(from_block=stage.deployment.deploy_block)
    assert sorted(bytes(e["args"]["batchHash"]) for e in events) == sorted(b.batch_hash for b in batches)
    assert _tx_count(stage, 1) == 1  # the restart found (or re-broadcast) the same transaction
    assert _rows(stage)[0][2] == rows[0][2]
    report = reconcile(stage.settings, stage.deployment, stage.units)
    assert report.ok, report.text()
    assert report.trades_settled == 2000
