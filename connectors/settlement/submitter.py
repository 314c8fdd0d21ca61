"""The settlement submitter: batches → ``settleBatch`` transactions, tracked to finality.

Each step reads as: observe the chain (``_observe``) → decide (``decide.next_action``, pure) → the
ledger applies the transition (``ledger.Ledger``, which owns every SQL statement, the epoch and
lock checks) → publish the status records. The states are ``decide.State``, the moves
``decide.MOVES``.

State machine per batch (stored in ``settlement_batches``, every transition also a row of
``settlement_transitions`` and a ``settlement.status`` record)::

    BUILT ──send──► SUBMITTED ──receipt ok──► INCLUDED ──finalized tag + depth──► FINALIZED
                      │   ▲                      │
     not included in  │   │ replacement sent     │ receipt gone / block hash changed
     N blocks: bump   ▼   │ (same nonce)         ▼
                    REPLACED (fee +12.5 % min)  REORGED ──► re-signed first, in old-nonce order
                      │ bump would pass the fee cap
                      ▼
                    ALERT (keeps watching the pending transaction; an operator raises the cap)
    reverted / send refused by the contract, and the chain does not already hold the batch:
                    FAILED (the status record is the compensating event; the market halts until
                    ``xchg settle resume MARKET`` moves the batch back to BUILT: a transition
                    like the others, with its row, status record and epoch check)

* **One sender per key.** ``acquire`` takes a PostgreSQL advisory lock on the operator address (a
  second submitter fails at start-up) and bumps the sender's ``epoch``; every state write carries
  the epoch and is refused when a newer holder exists (a paused zombie cannot write).
* **Nonces.** The decisions are pure functions in ``decide.py`` (its docstring has the rules). At
  most one transaction of ours can be mined next (the one whose nonce is the chain's count of the
  sender's mined transactions); nothing new is sent while it is in flight. A reorg can leave a
  pending transaction above a *nonce gap* (its predecessors' transactions removed, not re-queued):
  such a transaction is never fee-bumped, its inclusion clock is held at the tip, and the gap is
  filled at once: REORGED batches first, in the order of their old nonces (each re-signed at the
  chain's count, which is its old nonce when the gap is exactly the reorged ones), then BUILT ones,
  and a no-op self-transfer when no batch can fill it. Without a gap a new send takes the node's
  pending count. The nonce is recorded in ``settlement_senders.next_nonce`` and on the transaction
  row; replacements reuse it. Transactions are written to ``settlement_txs`` *before* broadcast
  (write-ahead): after a crash the submitter looks for a receipt of any of the batch's
  transactions and re-broadcasts the current one when the node does not know it (anvil also
  drops a transaction stranded above a gap when it mines the next block).
* **Fees.** EIP-1559 from ``eth_feeHistory`` (``chain.suggest_fees``), max fee capped by
  ``EXCHANGE_SETTLEMENT_MAX_FEE_WEI``; gas limit 150 % of a fresh ``eth_estimateGas``, capped by
  the block gas limit, re-estimated before each replacement. A transaction not included after
  ``EXCHANGE_SETTLEMENT_REPLACE_AFTER_BLOCKS`` blocks is replaced with max fee and tip raised by at
  least 12.5 % (or to the fresh suggestion when higher).
* **Finality.** INCLUDED → FINALIZED when the batch's block is at or below the ``finalized``
  block *and* at least ``EXCHANGE_SETTLEMENT_MIN_DEPTH`` blocks deep counting itself
  (``tip - block + 1 >= MIN_DEPTH``), and still has the recorded hash: two conditions, not the
  finalized tag plus that many blocks.
* **Database failure.** ``xchg settle run`` survives it (see ``Submitter.run``): it pauses with its
  circuit open, reconnects with capped exponential backoff, re-takes the sender's advisory lock and
  resumes from the write-ahead state. It stops with a one-line error and exit code 1 instead when
  resuming is not safe: another submitter took the sender (lock or epoch) during the outage.
* **Already settled = success after a check.** The contract reverts a replayed batch
  (``BatchAlreadySettled``). When a send is refused or a transaction reverts that way, the
  submitter looks for the ``BatchSettled`` event with this batch's hash (market and hash are
  indexed) and, when found, records that inclusion: the batch is settled exactly once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import psycopg
import stamina
from confluent_kafka import KafkaException, Producer, TopicPartition
from eth_hash.auto import keccak
from web3 import Web3
from web3.exceptions import (
    BlockNotFound,
    ContractCustomError,
    ContractLogicError,
    TransactionNotFound,
    Web3RPCError,
)

from connectors.settlement.batch_service import of_deployment, usable
from connectors.settlement.batcher import Batch, Chain, onchain_deltas
from connectors.settlement.chain import (
    Deployment,
    decode_revert,
    finalized_block,
    operator_account,
    settlement_contract,
    suggest_fees,
    web3,
)
from connectors.settlement.decide import (
    PENDING,
    Action,
    ChainView,
    Decision,
    Filler,
    Policy,
    Receipt,
    Seen,
    State,
    after_check,
    after_refusal,
    bumped,
    filler_fees,
    next_action,
    plan_send,
)
from connectors.settlement.economics import account_address, market_id
from connectors.settlement.errors import SettlementError
from connectors.settlement.ledger import Fenced, Ledger, Publish, Row, SignedTx, first_line
from streams.observability import SETTLEMENT_GAS_PRICE, SETTLEMENT_GAS_USED, get_logger
from streams.runtime.clients import producer_config
from streams.runtime.crashpoints import crash_point
from streams.serde.codec import Codec
from streams.serde.topics import SETTLEMENT_BATCHES as BATCHES_TOPIC
from streams.serde.topics import SETTLEMENT_STATUS
from streams.settings import Settings

log = get_logger("settlement.submitter")

__all__ = ["Fenced", "Row", "Submitter", "ensure_schema", "resume_market", "send_status"]

BATCH_SETTLED_TOPIC = keccak(b"BatchSettled(bytes32,uint64,uint64,bytes32,bytes32,bytes32)")


# The database is gone (connection lost, server stopped or restarting, statement cancelled): the
# run loop's circuit. psycopg raises OperationalError for a closed connection as well.
DB_DOWN = (psycopg.OperationalError, psycopg.InterfaceError)


def send_status(producer: Producer, topic: str) -> Publish:
    """A ``Ledger.publish`` sender: each record to ``topic`` keyed by its market, then a flush;
    True when the broker acknowledged every one within 15 s."""
    def send(records: Sequence[tuple[str, bytes]]) -> bool:
        for market, record in records:
            producer.produce(topic, record, market.encode())
        return producer.flush(15) == 0

    return send


class Submitter:
    def __init__(self, settings: Settings, deployment: Deployment, codec: Codec | None = None,
                 kafka: bool = True, group: str | None = None) -> None:
        self.settings = settings
        self.deployment = deployment
        self.key = deployment.settlement
        self.codec = codec or Codec()
        self.w3: Web3 = web3(settings.chain_rpc_url)
        self.contract = settlement_contract(self.w3, deployment.settlement)
        self.operator = operator_account(settings)
        if self.operator.address != deployment.operator:
            raise SettlementError(f"operator key is {self.operator.address}, the deployment's operator is "
                                  f"{deployment.operator} (EXCHANGE_SETTLEMENT_OPERATOR_KEY / namespace)")
        self.chain = Chain(account_address, deployment.tokens)
        self.ledger = Ledger(settings.writer_dsn(), self.key, self.operator.address, self.codec)
        self.ns = settings.namespace
        self.policy = Policy(replace_after=settings.settlement_replace_after_blocks,
                             min_depth=settings.settlement_min_depth)
        self.producer: Producer | None = Producer(producer_config(settings.bootstrap_servers)) if kafka else None
        self.consumer: Any = None
        if kafka:
            from streams.runtime.clients import make_consumer

            self.consumer = make_consumer(settings.bootstrap_servers,
                                          settings.client_identity(group, f"xchg-settle-{self.key.lower()}"))
            self.consumer.subscribe([self.ns(BATCHES_TOPIC)])
        self.block_gas_limit = int(self.w3.eth.get_block("latest")["gasLimit"])
        self.counters = {"bumps": 0, "reorgs": 0, "resent": 0, "already_settled": 0, "gap_fills": 0,
                         "db_outages": 0}
        self.filler: Filler | None = None
        self.holding: set[tuple[str, int]] = set()  # rows logged as waiting on a nonce gap

    # -- the ledger's sessions (read by tools and tests) -----------------------------------------
    @property
    def db(self) -> psycopg.Connection[Any]:
        return self.ledger.db

    @property
    def lock_db(self) -> psycopg.Connection[Any] | None:
        return self.ledger.lock_db

    @lock_db.setter
    def lock_db(self, conn: psycopg.Connection[Any] | None) -> None:
        self.ledger.lock_db = conn

    @property
    def epoch(self) -> int:
        return self.ledger.epoch

    # -- fencing ---------------------------------------------------------------------------------
    def acquire(self) -> Submitter:
        self.ledger.acquire()
        log.info("sender acquired", sender=self.operator.address, epoch=self.epoch, deployment=self.key)
        return self

    def close(self) -> None:
        """Release everything; safe after a database failure (broken sessions are just dropped)."""
        if self.producer is not None:
            self.producer.flush(10)
        if self.consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                self.consumer.close()
            self.consumer = None
        self.ledger.close()

    # -- input -----------------------------------------------------------------------------------
    def ingest(self, batches: Iterable[Batch]) -> int:
        """Store new batches as BUILT (idempotent on (deployment, market, batch_seq))."""
        added = 0
        for b in batches:
            record = self.codec.encode(BATCHES_TOPIC, b.record())
            added += self.ledger.ingest(b.market, b.batch_seq, b.first_trade_id, b.last_trade_id, b.batch_hash, record)
        self._publish()
        return added

    def _ingest_feed(self) -> int:
        if self.consumer is None:
            return 0
        topic = self.ns(BATCHES_TOPIC)
        messages = self.consumer.consume(500, 0.05)
        batches = []
        first: dict[int, int] = {}
        offsets: dict[int, int] = {}
        for m in messages:
            if not usable(m, log):  # raises ClientFatal for an error the consumer cannot go on after
                continue
            first.setdefault(m.partition(), m.offset())
            offsets[m.partition()] = m.offset() + 1
            if of_deployment(m.headers(), self.key):
                batches.append(Batch.from_record(self.codec.decode(BATCHES_TOPIC, m.value())))
        if not offsets:
            return 0
        try:
            added = self.ingest(batches)  # idempotent: a crash before the commit below re-ingests harmlessly
            self.consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                                 asynchronous=False)
        except BaseException:
            # Not stored (e.g. the database went away): the consumer's position is already past
            # these records, so rewind it, or the retried step would never see them again.
            for p, o in first.items():
                with contextlib.suppress(KafkaException):
                    self.consumer.seek(TopicPartition(topic, p, o))
            raise
        return added

    # -- status records --------------------------------------------------------------------------
    def _publish(self) -> None:
        """Every transition record not yet on ``settlement.status`` (after each transition)."""
        if self.producer is not None:
            self.ledger.publish(send_status(self.producer, self.ns(SETTLEMENT_STATUS)))

    # -- queries ---------------------------------------------------------------------------------
    def rows(self, states: Iterable[State] | None = None) -> list[Row]:
        return self.ledger.rows(states)

    def halted(self) -> set[str]:
        return self.ledger.halted()

    def _batch(self, row: Row) -> Batch:
        return Batch.from_record(self.codec.decode(BATCHES_TOPIC, row.record))

    def _call_args(self, batch: Batch) -> list[Any]:
        return [market_id(batch.market), batch.first_trade_id, batch.last_trade_id, batch.prev_batch_hash,
                batch.merkle_root, onchain_deltas(batch.deltas, self.chain)]

    def _receipt(self, tx_hash: bytes) -> Any:
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None

    def onchain_settlement(self, market: str, batch_hash: bytes) -> Any:
        """The BatchSettled log of this batch hash, or None."""
        logs = self.w3.eth.get_logs({
            "address": self.contract.address, "fromBlock": self.deployment.deploy_block, "toBlock": "latest",
            "topics": ["0x" + BATCH_SETTLED_TOPIC.hex(), "0x" + market_id(market).hex(), "0x" + batch_hash.hex()],
        })
        return logs[-1] if logs else None

    # -- observing the chain ---------------------------------------------------------------------
    def _view(self) -> ChainView:
        address = self.operator.address
        return ChainView(tip=int(self.w3.eth.block_number),
                         confirmed=int(self.w3.eth.get_transaction_count(address, "latest")),
                         pool_next=int(self.w3.eth.get_transaction_count(address, "pending")))

    def _observe(self, row: Row) -> Seen:
        """What the chain says about ``row``, as much as its state needs (``decide.Seen``)."""
        if row.state in PENDING:
            assert row.tx_hash is not None
            for tx_hash, _, _ in reversed(self.ledger.txs(row)):
                receipt = self._receipt(tx_hash)
                if receipt is not None:
                    return Seen(receipt=_receipt_of(tx_hash, receipt))
            return Seen(on_node=self._on_node(row.tx_hash))
        if row.state is State.INCLUDED:
            assert row.tx_hash is not None and row.block_number is not None
            receipt = self._receipt(row.tx_hash)
            if receipt is None:
                return Seen()
            seen = _receipt_of(row.tx_hash, receipt)
            canonical = self._block_hash(row.block_number) if seen.block_hash == row.block_hash else None
            return Seen(receipt=seen, canonical_hash=canonical)
        return Seen()

    def _on_node(self, tx_hash: bytes) -> bool:
        try:
            self.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return False
        return True

    def _block_hash(self, number: int) -> bytes | None:
        try:
            return bytes(self.w3.eth.get_block(number)["hash"])
        except BlockNotFound:
            return None

    # -- the loop --------------------------------------------------------------------------------
    def step(self) -> bool:
        """One pass: publish, ingest; then for pending rows (lowest nonce first) and included ones:
        observe → ``decide.next_action`` → the ledger applies the transition → publish; then carry
        out ``decide.plan_send``: at most one send (or one gap filler)."""
        self._publish()
        busy = self._ingest_feed() > 0
        view = self._view()
        rows = self.rows()
        # Both lists are taken before any transition: a row moves at most one state per step.
        pending = sorted((r for r in rows if r.state in PENDING), key=lambda r: r.nonce or 0)
        included = [r for r in rows if r.state is State.INCLUDED]
        if included:
            view = replace(view, finalized=finalized_block(self.w3))
        for row in (*pending, *included):
            seen = self._observe(row)
            busy = self._carry_out(row, next_action(row, seen, view, self.policy), seen, view) or busy
        rows = self.rows()
        plan = plan_send(rows, self.halted(), self._view())
        if plan is None:
            return busy
        by_key = {(r.market, r.batch_seq): r for r in rows}
        for key in plan.candidates:
            if self._send(by_key[key], plan.nonce):
                return True
        if plan.fill_gap:
            return self._fill_gap(plan.nonce) or busy
        return busy

    def _carry_out(self, row: Row, decision: Decision, seen: Seen, view: ChainView) -> bool:
        """Apply ``decision`` for a watched row; True when it changed something."""
        action = decision.action
        if row.state in PENDING and action is not Action.HOLD:
            self.holding.discard((row.market, row.batch_seq))
        if action is Action.MARK_INCLUDED:
            receipt = seen.receipt
            assert receipt is not None
            SETTLEMENT_GAS_USED.labels(row.market).observe(receipt.gas_used)
            SETTLEMENT_GAS_PRICE.labels(row.market).set(receipt.effective_gas_price)
            self._move(row, State.INCLUDED, tx_hash=receipt.tx_hash, block_number=receipt.block_number,
                       block_hash=receipt.block_hash, gas_used=receipt.gas_used, reason=None)
            return True
        if action is Action.CHECK_SETTLED:
            return self._check_settled(row, decision)
        if action is Action.MARK_REORGED:
            self.counters["reorgs"] += 1
            self._move(row, State.REORGED, reason=decision.reason)
            return True
        if action is Action.FINALIZE:
            self._move(row, State.FINALIZED, reason=None)
            return True
        if action in (Action.HOLD, Action.WAIT, Action.REPLACE) and row.state in PENDING:
            return self._watch_in_flight(row, decision, view)
        return False

    def _watch_in_flight(self, row: Row, decision: Decision, view: ChainView) -> bool:
        """A pending transaction without a receipt. Written ahead but never broadcast (a crash), or
        dropped by the node (anvil drops a transaction a reorg left above a gap when it mines the
        next block): it is sent again first (``decision.resend``), so that it is there to be mined
        the moment its nonce comes up."""
        rebroadcast = decision.resend and self._rebroadcast(row)
        if decision.action is Action.HOLD:
            # Waits on a nonce gap: no fee can get it mined, so it is never bumped, and its
            # inclusion clock is held at the tip until the gap below it is filled.
            if (row.market, row.batch_seq) not in self.holding:
                self.holding.add((row.market, row.batch_seq))
                log.info("transaction waits on a nonce gap", market=row.market, batch_seq=row.batch_seq,
                         nonce=row.nonce, chain_nonce=view.confirmed)
            if row.sent_block != view.tip:
                self.ledger.set_sent_block(row, view.tip)
            return False
        if rebroadcast:
            # The node took it again: the inclusion clock restarts from now (the replacement rule is
            # about transactions the node had). Refused (e.g. priced out after a base fee spike):
            # the clock runs on and the replacement below follows.
            self.ledger.set_sent_block(row, view.tip)
            return False
        if decision.action is Action.WAIT:
            return False
        return self._replace(row, view.tip)

    def _rebroadcast(self, row: Row) -> bool:
        """True when the node accepted the current transaction again."""
        current = next((raw for h, _, raw in self.ledger.txs(row) if h == row.tx_hash), None)
        return current is not None and self._broadcast(current)

    def _check_settled(self, row: Row, check: Decision) -> bool:
        """Success after a check: the chain holds a BatchSettled event with this batch's hash
        (INCLUDED, by whichever transaction), or ``decide.after_check`` says what else."""
        found = self.onchain_settlement(row.market, row.batch_hash)
        outcome = after_check(row, check, settled=found is not None)
        if found is None:
            assert outcome.state is not None and outcome.reason is not None
            if outcome.action is Action.FAIL:
                self._fail(row, outcome.reason)
            else:
                self._move(row, outcome.state, reason=outcome.reason)
            return True
        receipt = self._receipt(bytes(found["transactionHash"]))
        self.counters["already_settled"] += 1
        self._move(row, State.INCLUDED, tx_hash=bytes(found["transactionHash"]),
                   block_number=int(found["blockNumber"]), block_hash=bytes(found["blockHash"]),
                   gas_used=int(receipt["gasUsed"]) if receipt else None, reason=outcome.reason)
        return True

    def _move(self, row: Row, state: State, **changes: Any) -> None:
        self.ledger.move(row, state, **changes)
        self._publish()

    def _fail(self, row: Row, reason: str) -> None:
        self.ledger.fail(row, reason)
        self._publish()
        log.error("settlement halted", market=row.market, batch_seq=row.batch_seq, reason=reason)

    def settled(self) -> bool:
        return all(r.state is State.FINALIZED for r in self.rows())

    def run(self, stop: Callable[[], bool] | None = None, idle_exit_s: float | None = None, poll_s: float = 0.2,
            max_backoff_s: float = 30.0, db_backoff_max_s: float = 5.0) -> None:
        """Step until ``stop()``. Failures by class:

        * **Node or broker** (transient): the step is retried with capped exponential backoff; the
          state lives in the database, so a retried step is safe.
        * **Database** (``DB_DOWN``: connection lost, server stopped or restarting): the circuit
          opens and no step runs, so no chain action is taken, while new sessions are tried with
          capped exponential backoff (stamina, up to ``db_backoff_max_s``). It is safe to resume
          because every broadcast comes after the commit that records it (write-ahead): a failed
          step left either nothing on chain or a recorded transaction that the watch finds, or
          re-broadcasts when the node does not know it; consumed batches that were not stored are
          consumed again. On reconnect the sender's advisory lock is re-taken and its epoch checked;
          the circuit is logged closed only after a whole step has run against the database.
        * **Not safe to resume** (``Fenced``: another submitter took the sender, found by any write
          or on reconnect; ``ClientFatal`` from the consumer): the run ends with that error, which
          the CLI prints as one line with exit code 1."""
        import requests

        idle_since = time.monotonic()
        backoff = poll_s
        outage_started: float | None = None
        while not (stop and stop()):
            try:
                progressed = self.step()
            except DB_DOWN as error:
                if outage_started is None:
                    outage_started = time.monotonic()
                    self.counters["db_outages"] += 1
                    log.warning("database circuit open: submitting paused", error=first_line(error))
                if not self._wait_for_database(stop, db_backoff_max_s):
                    return  # stopped while the database was down
                continue
            except (requests.RequestException, Web3RPCError, TimeoutError, KafkaException) as error:
                log.warning("step failed; retrying", error=str(error)[:300], backoff_s=backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, max_backoff_s)
                continue
            if outage_started is not None:  # a whole step ran against the database
                log.warning("database circuit closed: resumed", outage_s=round(time.monotonic() - outage_started, 3))
                outage_started = None
            backoff = poll_s
            if progressed:
                idle_since = time.monotonic()
                continue
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s and self.settled():
                return
            if self.consumer is None:
                time.sleep(poll_s)

    def _wait_for_database(self, stop: Callable[[], bool] | None, wait_max_s: float) -> bool:
        """Reconnect with capped exponential backoff until the database answers (True) or
        ``stop()`` (False); ``Fenced`` ends it (resuming is not safe)."""
        for attempt in stamina.retry_context(on=DB_DOWN, attempts=None, timeout=None, wait_initial=0.2,
                                             wait_max=wait_max_s, wait_jitter=0.1):
            with attempt:
                if stop and stop():
                    return False
                try:
                    self.ledger.reconnect()
                except DB_DOWN as error:
                    log.info("database still unavailable", attempt=attempt.num, error=first_line(error))
                    raise
        log.info("database circuit half-open: reconnected, sender lock re-taken", epoch=self.epoch)
        return True

    # -- sending ---------------------------------------------------------------------------------
    def _estimate(self, batch: Batch) -> tuple[int | None, tuple[str, tuple[Any, ...]] | None]:
        fn = self.contract.functions.settleBatch(*self._call_args(batch))
        try:
            return int(fn.estimate_gas({"from": self.operator.address})), None
        except ContractCustomError as error:
            decoded = decode_revert(error.data if hasattr(error, "data") else error.args)
            return None, decoded or ("unknown", (str(error),))
        except ContractLogicError as error:
            return None, ("revert", (str(error),))

    def _sign(self, batch: Batch, nonce: int, fees: Any, gas: int) -> SignedTx:
        tx = {"chainId": self.deployment.chain_id, "nonce": nonce, "to": self.contract.address, "value": 0,
              "data": self.contract.encode_abi("settleBatch", self._call_args(batch)), "gas": gas,
              "maxFeePerGas": fees.max_fee_per_gas, "maxPriorityFeePerGas": fees.priority_fee, "type": 2}
        signed = self.operator.sign_transaction(tx)
        return SignedTx(bytes(signed.hash), bytes(signed.raw_transaction), nonce, fees.max_fee_per_gas,
                        fees.priority_fee, gas)

    def _fees(self) -> Any:
        fees = suggest_fees(self.w3)
        cap = self.settings.settlement_max_fee_wei
        if fees.max_fee_per_gas > cap:
            return type(fees)(cap, min(fees.priority_fee, cap))
        return fees

    def _send(self, row: Row, nonce: int) -> bool:
        """Sign ``row``'s batch at ``nonce`` (chosen by ``plan_send``), record it, then broadcast.
        A refusal of the contract is decided by ``decide.after_refusal``; False when that says to
        wait (an earlier batch is missing)."""
        batch = self._batch(row)
        estimate, refused = self._estimate(batch)
        if refused is not None:
            decision = after_refusal(row, *refused)
            if decision.action is Action.WAIT:
                return False
            if decision.action is Action.CHECK_SETTLED:
                return self._check_settled(row, decision)
            assert decision.reason is not None
            self._fail(row, decision.reason)
            return True
        assert estimate is not None
        gas = min(estimate * 3 // 2, self.block_gas_limit)
        fees = self._fees()
        # The inclusion clock starts at the tip of this moment, read now: the step's view can be a
        # block behind (anvil mines the previous transaction asynchronously), and a clock started
        # early replaces a transaction before it had its blocks.
        tip = int(self.w3.eth.block_number)
        tx = self._sign(batch, nonce, fees, gas)
        if row.state is State.REORGED:
            self.counters["resent"] += 1
        self.ledger.submit(row, tx, sent_block=tip)
        self._publish()
        crash_point("settle-before-send")
        self._broadcast(tx.raw)
        crash_point("settle-after-send")
        return True

    def _broadcast(self, raw: bytes) -> bool:
        """Send a signed transaction; False when the node refuses it ("already known", "nonce too
        low" = already mined, fee too low ...): the watch loop decides what that means."""
        try:
            self.w3.eth.send_raw_transaction(raw)
        except (Web3RPCError, ValueError) as error:
            log.warning("broadcast refused", error=str(error)[:200])
            return False
        return True

    def _fill_gap(self, nonce: int) -> bool:
        """Fill a nonce gap that no batch can fill with a 0-value transfer to the sender itself.

        Not written ahead: it changes no batch state, and a restart that forgot it at worst signs
        another no-op for the same nonce, of which only one can be mined."""
        tip = int(self.w3.eth.block_number)
        fresh = self._fees()
        fees = filler_fees(self.filler, nonce, tip, (fresh.max_fee_per_gas, fresh.priority_fee),
                           self.settings.settlement_replace_after_blocks, self.settings.settlement_max_fee_wei)
        if fees is None:
            return False
        max_fee, priority = fees
        signed = self.operator.sign_transaction({
            "chainId": self.deployment.chain_id, "nonce": nonce, "to": self.operator.address, "value": 0,
            "gas": 21_000, "maxFeePerGas": max_fee, "maxPriorityFeePerGas": priority, "type": 2})
        self.filler = Filler(nonce, tip, max_fee, priority)
        self.counters["gap_fills"] += 1
        log.warning("nonce gap filled with a no-op transfer", nonce=nonce, tx_hash=bytes(signed.hash).hex(),
                    max_fee_per_gas=max_fee)
        return self._broadcast(bytes(signed.raw_transaction))

    def _replace(self, row: Row, tip: int) -> bool:
        """Fee bump at the same nonce (``decide.bumped``); ALERT instead when it would pass the cap."""
        assert row.max_fee_per_gas is not None and row.priority_fee is not None and row.nonce is not None
        fresh = suggest_fees(self.w3)
        max_fee, priority = bumped((row.max_fee_per_gas, row.priority_fee), (fresh.max_fee_per_gas, fresh.priority_fee))
        cap = self.settings.settlement_max_fee_wei
        if max_fee > cap:
            if row.state is not State.ALERT:
                self._move(row, State.ALERT, reason=f"replacement needs max fee {max_fee} wei > cap {cap} wei")
            return False
        batch = self._batch(row)
        estimate, refused = self._estimate(batch)
        if refused is not None:
            if refused[0] == "BatchAlreadySettled":
                return False  # the pending one (or a twin) got in: the receipt check picks it up
            estimate = None
        gas = min(estimate * 3 // 2, self.block_gas_limit) if estimate else self.ledger.gas_limit(row.tx_hash) or 0
        tx = self._sign(batch, row.nonce, type(fresh)(max_fee, priority), gas)
        self.counters["bumps"] += 1
        self.ledger.replace(row, tx, sent_block=tip,
                            reason=f"not included after {tip - (row.sent_block or tip)} blocks: fee bump")
        self._publish()
        self._broadcast(tx.raw)
        return True


def _receipt_of(tx_hash: bytes, receipt: Any) -> Receipt:
    return Receipt(tx_hash=tx_hash, status=int(receipt["status"]), block_number=int(receipt["blockNumber"]),
                   block_hash=bytes(receipt["blockHash"]), gas_used=int(receipt["gasUsed"]),
                   effective_gas_price=int(receipt["effectiveGasPrice"]))


def resume_market(settings: Settings, deployment: Deployment, market: str, codec: Codec | None = None) -> int:
    """Operator action after a FAILED batch: lift the market's halt and move its FAILED batches back
    to BUILT; the number of batches re-queued.

    A transition like the submitter's (``Ledger.resume``): a transition row per batch, written
    under the sender's epoch as read here (refused, ``Fenced``, when another submitter takes the
    sender meanwhile), and its ``settlement.status`` record published now, or by the submitter's
    next step when the broker does not acknowledge it in time. The sender is not taken: a running
    submitter goes on and sends the re-queued batch."""
    ledger = Ledger(settings.writer_dsn(), deployment.settlement, deployment.operator, codec or Codec())
    try:
        ledger.observe()
        requeued = ledger.resume(market)
        producer = Producer(producer_config(settings.bootstrap_servers))
        ledger.publish(send_status(producer, settings.namespace(SETTLEMENT_STATUS)))
    finally:
        ledger.close()
    return requeued


def ensure_schema(settings: Settings) -> None:
    """Apply the settlement migrations (versions 050-069) through the project's migration runner.

    Only this range is run from here (a copy of those files in a temporary folder): the other
    versions belong to the storage engineer's ``xchg db migrate``; the runner records versions and
    checksums in the same ``schema_migrations`` table either way."""
    import re
    import shutil
    import tempfile
    from pathlib import Path

    from connectors.timescale.migrations import MIGRATIONS_DIR
    from connectors.timescale.migrations import migrate as run

    with tempfile.TemporaryDirectory() as tmp:
        for path in MIGRATIONS_DIR.glob("*.sql"):
            match = re.match(r"^(\d{3})_", path.name)
            if match and 50 <= int(match.group(1)) <= 69:
                shutil.copy(path, Path(tmp) / path.name)
        run(settings.writer_dsn(), Path(tmp))
