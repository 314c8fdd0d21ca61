"""PostgreSQL goes away under the submitter.

A real ``xchg settle run`` rides out an immediate shutdown of the database in the middle of
submitting (more batches arrive on Kafka meanwhile), and resumes from its write-ahead state: every
batch settled exactly once, its rows agreeing with the chain. Where resuming is not safe (another
submitter took the sender during the outage) it stops with the fencing error instead."""

from __future__ import annotations

import contextlib
import signal
import time

import psycopg
import pytest

from connectors.settlement.batcher import Batch
from connectors.settlement.decide import State
from connectors.settlement.reconcile import reconcile
from connectors.settlement.submitter import Fenced
from tests.pipeline import wait_for
from tests.settlement.conftest import Outage, Stage
from tests.settlement.test_submitter_crash import _start
from tests.settlement.test_submitter_faults import settled_events

pytestmark = pytest.mark.timeout(300)

BATCH_TRADES = 50


def _batches(stage: Stage) -> list[Batch]:
    stage.settings = stage.settings.model_copy(update={"settlement_batch_trades": BATCH_TRADES})
    out: list[Batch] = []
    for market in ("BTC-USD", "ETH-USD"):
        trades = stage.trades(6 * BATCH_TRADES, accounts=8, market=market)
        stage.produce_trades(trades)  # for the reconciliation
        out += stage.batches(trades)
    return out


def _rows(stage: Stage) -> list[tuple[str, int, str, bytes | None, int | None, bytes | None]] | None:
    """The submitter's rows, or None while the database does not answer."""
    assert stage.settings.database_url is not None
    try:
        with psycopg.connect(stage.settings.database_url.get_secret_value(), connect_timeout=3) as db:
            return [(m, int(s), st, bytes(tx) if tx else None, bn, bytes(bh) if bh else None)
                    for m, s, st, tx, bn, bh in db.execute(
                        "select market, batch_seq, state, tx_hash, block_number, block_hash from settlement_batches"
                        " where deployment = %s order by market, batch_seq", (stage.deployment.settlement,)).fetchall()]
    except psycopg.OperationalError:
        return None


def test_submitter_rides_out_a_database_outage_and_settles_every_batch_once(stage: Stage, pg_outage: Outage) -> None:
    batches = _batches(stage)
    first, during = batches[:8], batches[8:]
    stage.produce_batches(first)
    log_path = stage.tmp / "run.log"
    proc = _start(stage, "run.log")
    try:
        def on_chain() -> bool:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            rows = _rows(stage) or []
            return sum(r[2] in (State.INCLUDED, State.FINALIZED) for r in rows) >= 2

        wait_for(on_chain, 60, "two batches on chain (submission under way)")
        pg_outage.stop()
        try:
            stage.produce_batches(during)  # more batches arrive while the database is down

            def retrying() -> bool:
                assert proc.poll() is None, f"the submitter died during the outage:\n{log_path.read_text()[-3000:]}"
                stage.mine(1)
                text = log_path.read_text()
                return "database circuit open" in text and text.count("database still unavailable") >= 3

            wait_for(retrying, 60, "the submitter to keep retrying the database", interval=0.2)
            during_outage = log_path.read_text()
        finally:
            pg_outage.start()
        assert "database circuit closed" not in during_outage and "resumed" not in during_outage

        def settled() -> bool:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            rows = _rows(stage)
            if rows is not None and len(rows) == len(batches) and all(r[2] == State.FINALIZED for r in rows):
                return True
            stage.mine(2)
            return False

        wait_for(settled, 120, "every batch to finalize after the database returned", interval=0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    opened, closed = log.index("database circuit open"), log.index("database circuit closed: resumed")
    assert opened < closed

    events = settled_events(stage)
    assert len(events) == len(batches) and sorted(events) == sorted(b.batch_hash for b in batches)  # once each
    rows = _rows(stage)
    assert rows is not None
    for market, seq, _, tx_hash, block_number, block_hash in rows:  # the submitter's rows are the chain's
        assert tx_hash is not None, (market, seq)
        receipt = stage.w3.eth.get_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        assert (receipt["blockNumber"], bytes(receipt["blockHash"])) == (block_number, block_hash)
    assert stage.settings.database_url is not None
    with psycopg.connect(stage.settings.database_url.get_secret_value()) as db:
        txs = db.execute("select market, batch_seq, count(*) from settlement_txs where deployment = %s"
                         " group by market, batch_seq", (stage.deployment.settlement,)).fetchall()
    assert sorted((m, int(s), int(n)) for m, s, n in txs) == sorted((b.market, b.batch_seq, 1) for b in batches)
    report = reconcile(stage.settings, stage.deployment, stage.units)
    assert report.ok, report.text()
    assert report.events == len(batches)


def test_a_sender_taken_over_during_the_outage_is_not_resumed(stage: Stage) -> None:
    first = stage.submitter().acquire()
    try:
        # Its sessions die (as when the server restarts): the advisory lock goes with them, and a
        # second submitter takes the sender before the first one gets back.
        assert first.lock_db is not None
        first.db.close()
        first.lock_db.close()
        second = stage.submitter().acquire()
        try:
            started = time.monotonic()
            with pytest.raises(Fenced, match="taken by another submitter during the database outage"):
                first.run(stop=lambda: time.monotonic() - started > 30)
            assert second.epoch == first.epoch + 1
            assert second.step() is False  # the new holder carries on
        finally:
            second.close()
    finally:
        first.close()


def test_batches_consumed_in_a_step_that_failed_on_the_database_are_consumed_again(stage: Stage) -> None:
    batches = _batches(stage)[:3]
    stage.produce_batches(batches)
    sub = stage.submitter(kafka=True).acquire()
    real_ingest = sub.ingest
    failures: list[int] = []

    def ingest_then_fail(batch_list: list[Batch]) -> int:
        if batch_list and not failures:  # the database dies while the first consumed batches are stored
            failures.append(len(batch_list))
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real_ingest(batch_list)

    sub.ingest = ingest_then_fail  # type: ignore[method-assign]
    try:
        deadline = time.monotonic() + 60
        while not failures:
            assert time.monotonic() < deadline, "no batch consumed"
            with contextlib.suppress(psycopg.OperationalError):
                sub.step()
        assert sub.rows() == []  # nothing stored by the failed step

        def stored() -> bool:
            sub.step()
            return len(sub.rows()) == len(batches)

        wait_for(stored, 60, "the same batches to be consumed again")
        assert sorted((r.market, r.batch_seq) for r in sub.rows()) == sorted((b.market, b.batch_seq) for b in batches)
    finally:
        sub.close()
