"""The settlement submitter: batches → ``settleBatch`` transactions, tracked to finality.

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
                    ``xchg settle resume MARKET`` re-queues the batch as BUILT)

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import stamina
from confluent_kafka import KafkaException, Producer, TopicPartition
from eth_hash.auto import keccak
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, TransactionNotFound, Web3RPCError

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
    ALERT,
    BUILT,
    FAILED,
    FINALIZED,
    INCLUDED,
    PENDING,
    REORGED,
    REPLACED,
    SUBMITTED,
    ChainView,
    Filler,
    Watch,
    bump,
    filler_fees,
    plan_send,
    watch_pending,
)
from connectors.settlement.economics import account_address, market_id
from connectors.settlement.errors import SettlementError
from streams.observability import SETTLEMENT_BATCHES, SETTLEMENT_GAS_PRICE, SETTLEMENT_GAS_USED, get_logger
from streams.runtime.clients import producer_config
from streams.runtime.crashpoints import crash_point
from streams.serde.codec import Codec
from streams.serde.topics import SETTLEMENT_BATCHES as BATCHES_TOPIC
from streams.serde.topics import SETTLEMENT_STATUS
from streams.settings import Settings

log = get_logger("settlement.submitter")

__all__ = ["ALERT", "BUILT", "FAILED", "FINALIZED", "INCLUDED", "PENDING", "REORGED", "REPLACED", "SUBMITTED",
           "Fenced", "Row", "Submitter", "bump", "ensure_schema", "resume_market"]

BATCH_SETTLED_TOPIC = keccak(b"BatchSettled(bytes32,uint64,uint64,bytes32,bytes32,bytes32)")


# The database is gone (connection lost, server stopped or restarting, statement cancelled): the
# run loop's circuit. psycopg raises OperationalError for a closed connection as well.
DB_DOWN = (psycopg.OperationalError, psycopg.InterfaceError)


class Fenced(SettlementError):
    """A newer submitter holds this sender: stop writing."""


@dataclass
class Row:
    market: str
    batch_seq: int
    first_trade_id: int
    last_trade_id: int
    batch_hash: bytes
    record: bytes
    state: str
    bumps: int
    nonce: int | None
    tx_hash: bytes | None
    sent_block: int | None
    max_fee_per_gas: int | None
    priority_fee: int | None
    block_number: int | None
    block_hash: bytes | None
    gas_used: int | None

    COLUMNS = ("market, batch_seq, first_trade_id, last_trade_id, batch_hash, record, state, bumps, nonce, tx_hash,"
               " sent_block, max_fee_per_gas, priority_fee, block_number, block_hash, gas_used")

    @classmethod
    def of(cls, r: tuple[Any, ...]) -> Row:
        values = list(r)
        for i in (11, 12):
            values[i] = int(values[i]) if values[i] is not None else None
        for i in (4, 5, 9, 14):
            values[i] = bytes(values[i]) if values[i] is not None else None
        return cls(*values)


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
        self.db = self._connect_at_start()
        self.lock_db: psycopg.Connection[Any] | None = None
        self.epoch = 0
        self.ns = settings.namespace
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

    # -- database sessions -----------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        # Keepalives: a server that vanishes without closing the socket is noticed in seconds.
        return psycopg.connect(self.settings.writer_dsn(), autocommit=True, connect_timeout=5, keepalives=1,
                               keepalives_idle=5, keepalives_interval=2, keepalives_count=2)

    def _connect_at_start(self) -> psycopg.Connection[Any]:
        try:
            return self._connect()
        except psycopg.OperationalError as error:
            raise SettlementError(f"database unreachable: {_first_line(error)}") from None

    def _close_db(self) -> None:
        for conn in (self.lock_db, self.db):
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self.lock_db = None

    def _reconnect(self) -> None:
        """New sessions after a database failure. Raises a ``DB_DOWN`` error while the database is
        unreachable, and ``Fenced`` when resuming is not safe: the sender's advisory lock (lost
        with the old session) is held by someone else, or its epoch moved (another submitter took
        over during the outage)."""
        self._close_db()
        self.db = self._connect()
        if self.epoch == 0:
            return  # never acquired (tools and tests that only read)
        lock = self._connect()
        if not self._try_lock(lock):
            lock.close()
            raise Fenced(f"sender {self.operator.address} was taken by another submitter during the database "
                         "outage (advisory lock held)")
        self.lock_db = lock
        row = self.db.execute("select epoch from settlement_senders where address = %s",
                              (self.operator.address,)).fetchone()
        if row is None or int(row[0]) != self.epoch:
            raise Fenced(f"sender {self.operator.address} was taken over during the database outage "
                         f"(epoch {row and row[0]} != {self.epoch})")

    def _try_lock(self, conn: psycopg.Connection[Any]) -> bool:
        got = conn.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))",
                           (f"xchg-settle:{self.operator.address}",)).fetchone()
        return bool(got and got[0])

    # -- fencing ---------------------------------------------------------------------------------
    def acquire(self) -> Submitter:
        self.lock_db = self._connect_at_start()
        if not self._try_lock(self.lock_db):
            self.lock_db.close()
            raise SettlementError(f"another submitter holds sender {self.operator.address} (advisory lock)")
        row = self.db.execute(
            "insert into settlement_senders (address, epoch) values (%s, 1) on conflict (address) do update"
            " set epoch = settlement_senders.epoch + 1, updated_at = now() returning epoch",
            (self.operator.address,)).fetchone()
        assert row is not None
        self.epoch = int(row[0])
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
        self._close_db()

    def _check_epoch(self, cur: psycopg.Cursor[Any]) -> None:
        row = cur.execute("select epoch from settlement_senders where address = %s for update",
                          (self.operator.address,)).fetchone()
        if row is None or int(row[0]) != self.epoch:
            raise Fenced(f"sender {self.operator.address} was taken over (epoch {row and row[0]} != {self.epoch})")

    # -- input -----------------------------------------------------------------------------------
    def ingest(self, batches: Iterable[Batch]) -> int:
        """Store new batches as BUILT (idempotent on (deployment, market, batch_seq))."""
        added = 0
        for b in batches:
            record = self.codec.encode(BATCHES_TOPIC, b.record())
            with self.db.transaction():
                cur = self.db.execute(
                    "insert into settlement_batches (deployment, market, batch_seq, first_trade_id, last_trade_id,"
                    " batch_hash, record, state) values (%s, %s, %s, %s, %s, %s, %s, 'BUILT') on conflict do nothing",
                    (self.key, b.market, b.batch_seq, b.first_trade_id, b.last_trade_id, b.batch_hash, record))
                if cur.rowcount:
                    added += 1
                    self._record_transition(b.market, b.batch_seq, BUILT, {"bumps": 0})
        self._emit_pending()
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

    # -- transitions -----------------------------------------------------------------------------
    def _record_transition(self, market: str, batch_seq: int, state: str, fields: dict[str, Any]) -> None:
        record = {
            "market": market, "batch_seq": batch_seq, "state": state,
            "tx_hash": fields.get("tx_hash"), "nonce": fields.get("nonce"),
            "block_number": fields.get("block_number"), "block_hash": fields.get("block_hash"),
            "gas_used": fields.get("gas_used"),
            "max_fee_per_gas": Decimal(fields["max_fee_per_gas"]) if fields.get("max_fee_per_gas") else None,
            "bumps": int(fields.get("bumps") or 0), "reason": fields.get("reason"),
            "ts": int(time.time() * 1000),
        }
        self.db.execute(
            "insert into settlement_transitions (deployment, market, batch_seq, state, record) values (%s, %s, %s, %s, %s)",
            (self.key, market, batch_seq, state, self.codec.encode(SETTLEMENT_STATUS, record)))
        SETTLEMENT_BATCHES.labels(market, state).inc()

    def _transition(self, row: Row, state: str, before: Any = None, **fields: Any) -> None:
        """Store the new state and its transition row in one transaction, after the fencing check;
        ``before()`` runs inside that transaction (write-ahead records that must not outlive a fence)."""
        columns = {"state": state, **fields}
        with self.db.transaction(), self.db.cursor() as cur:
            self._check_epoch(cur)
            if before is not None:
                before()
            sets = ", ".join(f"{k} = %s" for k in columns)
            cur.execute(f"update settlement_batches set {sets}, updated_at = now()"
                        " where deployment = %s and market = %s and batch_seq = %s",
                        (*columns.values(), self.key, row.market, row.batch_seq))
            merged = {"tx_hash": row.tx_hash, "nonce": row.nonce, "block_number": row.block_number,
                      "block_hash": row.block_hash, "gas_used": row.gas_used, "max_fee_per_gas": row.max_fee_per_gas,
                      "bumps": row.bumps, **fields}
            if state in (BUILT, SUBMITTED, REORGED):
                merged.update(block_number=fields.get("block_number"), block_hash=fields.get("block_hash"),
                              gas_used=fields.get("gas_used"))
            self._record_transition(row.market, row.batch_seq, state, merged)
        for k, v in columns.items():
            setattr(row, k, v)
        log.info("transition", market=row.market, batch_seq=row.batch_seq, state=state,
                 **{k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()})
        self._emit_pending()

    def _emit_pending(self) -> None:
        if self.producer is None:
            return
        rows = self.db.execute("select id, market, record from settlement_transitions where deployment = %s"
                               " and not emitted order by id", (self.key,)).fetchall()
        if not rows:
            return
        for _, market, record in rows:
            self.producer.produce(self.ns(SETTLEMENT_STATUS), bytes(record), market.encode())
        if self.producer.flush(15) == 0:
            self.db.execute("update settlement_transitions set emitted = true where id = any(%s)",
                            ([r[0] for r in rows],))

    # -- queries ---------------------------------------------------------------------------------
    def rows(self, states: Iterable[str] | None = None) -> list[Row]:
        sql = f"select {Row.COLUMNS} from settlement_batches where deployment = %s"
        params: list[Any] = [self.key]
        if states is not None:
            sql += " and state = any(%s)"
            params.append(list(states))
        return [Row.of(r) for r in self.db.execute(sql + " order by market, batch_seq", params).fetchall()]

    def halted(self) -> set[str]:
        return {r[0] for r in self.db.execute("select market from settlement_halts where deployment = %s",
                                              (self.key,)).fetchall()}

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

    # -- the loop --------------------------------------------------------------------------------
    def _view(self) -> ChainView:
        address = self.operator.address
        return ChainView(tip=int(self.w3.eth.block_number),
                         confirmed=int(self.w3.eth.get_transaction_count(address, "latest")),
                         pool_next=int(self.w3.eth.get_transaction_count(address, "pending")))

    def step(self) -> bool:
        """One pass: ingest; watch pending transactions (lowest nonce first) and included ones;
        then carry out ``decide.plan_send``: at most one send (or one gap filler)."""
        self._emit_pending()
        busy = self._ingest_feed() > 0
        view = self._view()
        rows = self.rows()
        # Both lists are taken before any transition: a row moves at most one state per step.
        pending = sorted((r for r in rows if r.state in PENDING), key=lambda r: r.nonce or 0)
        included = [r for r in rows if r.state == INCLUDED]
        for row in pending:
            busy = self._watch_pending(row, view) or busy
        for row in included:
            busy = self._watch_included(row, view.tip) or busy
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

    def settled(self) -> bool:
        return all(r.state == FINALIZED for r in self.rows())

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
                    log.warning("database circuit open: submitting paused", error=_first_line(error))
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
                    self._reconnect()
                except DB_DOWN as error:
                    log.info("database still unavailable", attempt=attempt.num, error=_first_line(error))
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

    def _sign(self, batch: Batch, nonce: int, fees: Any, gas: int) -> tuple[bytes, bytes]:
        tx = {"chainId": self.deployment.chain_id, "nonce": nonce, "to": self.contract.address, "value": 0,
              "data": self.contract.encode_abi("settleBatch", self._call_args(batch)), "gas": gas,
              "maxFeePerGas": fees.max_fee_per_gas, "maxPriorityFeePerGas": fees.priority_fee, "type": 2}
        signed = self.operator.sign_transaction(tx)
        return bytes(signed.hash), bytes(signed.raw_transaction)

    def _fees(self) -> Any:
        fees = suggest_fees(self.w3)
        cap = self.settings.settlement_max_fee_wei
        if fees.max_fee_per_gas > cap:
            return type(fees)(cap, min(fees.priority_fee, cap))
        return fees

    def _send(self, row: Row, nonce: int) -> bool:
        """Sign ``row``'s batch at ``nonce`` (chosen by ``plan_send``), record it, then broadcast.
        False when the contract says an earlier batch is missing (wait)."""
        batch = self._batch(row)
        estimate, refused = self._estimate(batch)
        if refused is not None:
            return self._refused(row, refused)
        assert estimate is not None
        gas = min(estimate * 3 // 2, self.block_gas_limit)
        fees = self._fees()
        # The inclusion clock starts at the tip of this moment, read now: the step's view can be a
        # block behind (anvil mines the previous transaction asynchronously), and a clock started
        # early replaces a transaction before it had its blocks.
        tip = int(self.w3.eth.block_number)
        tx_hash, raw = self._sign(batch, nonce, fees, gas)

        def write_ahead() -> None:
            self.db.execute("update settlement_senders set next_nonce = %s, updated_at = now() where address = %s",
                            (nonce + 1, self.operator.address))
            self._store_tx(row, tx_hash, raw, nonce, fees, gas)

        if row.state == REORGED:
            self.counters["resent"] += 1
        self._transition(row, SUBMITTED, before=write_ahead, nonce=nonce, tx_hash=tx_hash, sent_block=tip,
                         max_fee_per_gas=fees.max_fee_per_gas, priority_fee=fees.priority_fee,
                         block_number=None, block_hash=None, gas_used=None, reason=None)
        crash_point("settle-before-send")
        self._broadcast(raw)
        crash_point("settle-after-send")
        return True

    def _store_tx(self, row: Row, tx_hash: bytes, raw: bytes, nonce: int, fees: Any, gas: int) -> None:
        self.db.execute(
            "insert into settlement_txs (tx_hash, deployment, market, batch_seq, sender, nonce, max_fee_per_gas,"
            " priority_fee, gas_limit, raw) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
            (tx_hash, self.key, row.market, row.batch_seq, self.operator.address, nonce, fees.max_fee_per_gas,
             fees.priority_fee, gas, raw))

    def _broadcast(self, raw: bytes) -> bool:
        """Send a signed transaction; False when the node refuses it ("already known", "nonce too
        low" = already mined, fee too low ...): the watch loop decides what that means."""
        try:
            self.w3.eth.send_raw_transaction(raw)
        except (Web3RPCError, ValueError) as error:
            log.warning("broadcast refused", error=str(error)[:200])
            return False
        return True

    def _refused(self, row: Row, refused: tuple[str, tuple[Any, ...]]) -> bool:
        name, args = refused
        if name == "BatchAlreadySettled":
            return self._success_after_check(row, f"BatchAlreadySettled{args}")
        if name == "SequenceGap" and args and int(args[1]) < row.first_trade_id:
            return False  # an earlier batch is not on chain (yet, or again after a reorg): wait for it
        self._fail(row, f"contract refused the batch: {name}{args}")
        return True

    def _success_after_check(self, row: Row, why: str) -> bool:
        found = self.onchain_settlement(row.market, row.batch_hash)
        if found is None:
            self._fail(row, f"{why}, but no BatchSettled event with this batch hash on chain")
            return True
        receipt = self._receipt(bytes(found["transactionHash"]))
        self.counters["already_settled"] += 1
        self._transition(row, INCLUDED, tx_hash=bytes(found["transactionHash"]), block_number=int(found["blockNumber"]),
                         block_hash=bytes(found["blockHash"]),
                         gas_used=int(receipt["gasUsed"]) if receipt else None,
                         reason=f"already settled on chain, checked: {why}")
        return True

    def _fail(self, row: Row, reason: str) -> None:
        def halt() -> None:
            self.db.execute("insert into settlement_halts (deployment, market, batch_seq, reason) values (%s, %s, %s, %s)"
                            " on conflict (deployment, market) do nothing", (self.key, row.market, row.batch_seq, reason))

        self._transition(row, FAILED, before=halt, reason=reason)
        log.error("settlement halted", market=row.market, batch_seq=row.batch_seq, reason=reason)

    # -- watching --------------------------------------------------------------------------------
    def _txs(self, row: Row) -> list[tuple[bytes, int, bytes]]:
        return [(bytes(h), int(n), bytes(raw)) for h, n, raw in self.db.execute(
            "select tx_hash, nonce, raw from settlement_txs where deployment = %s and market = %s and batch_seq = %s"
            " order by created_at", (self.key, row.market, row.batch_seq)).fetchall()]

    def _find_receipt(self, txs: list[tuple[bytes, int, bytes]]) -> tuple[bytes, Any] | None:
        for tx_hash, _, _ in reversed(txs):
            receipt = self._receipt(tx_hash)
            if receipt is not None:
                return tx_hash, receipt
        return None

    def _watch_pending(self, row: Row, view: ChainView) -> bool:
        txs = self._txs(row)
        found = self._find_receipt(txs)
        assert row.nonce is not None and row.tx_hash is not None
        action = watch_pending(int(found[1]["status"]) if found else None, row.nonce, row.sent_block, view,
                               self.settings.settlement_replace_after_blocks)
        if action is not Watch.HOLD:
            self.holding.discard((row.market, row.batch_seq))
        if action is Watch.INCLUDED:
            assert found is not None
            tx_hash, receipt = found
            gas_used = int(receipt["gasUsed"])
            SETTLEMENT_GAS_USED.labels(row.market).observe(gas_used)
            SETTLEMENT_GAS_PRICE.labels(row.market).set(int(receipt["effectiveGasPrice"]))
            self._transition(row, INCLUDED, tx_hash=tx_hash, block_number=int(receipt["blockNumber"]),
                             block_hash=bytes(receipt["blockHash"]), gas_used=gas_used, reason=None)
            return True
        if action is Watch.REVERTED:
            assert found is not None
            return self._success_after_check(row, f"transaction {found[0].hex()} reverted")
        if action is Watch.CONSUMED:
            # The nonce is used but none of our transactions has a receipt: settled by another
            # transaction (checked) or lost; either way the send path decides (estimate first).
            if self.onchain_settlement(row.market, row.batch_hash) is not None:
                return self._success_after_check(row, "nonce consumed by another transaction")
            self._transition(row, REORGED, reason=f"nonce {row.nonce} consumed without a receipt of ours")
            return True
        # Written ahead but never broadcast (a crash), or dropped by the node (anvil drops a
        # transaction a reorg left above a gap when it mines the next block): send it again, so
        # that it is there to be mined the moment its nonce comes up.
        rebroadcast = self._rebroadcast_if_lost(row, txs)
        if action is Watch.HOLD:
            # Waits on a nonce gap: no fee can get it mined, so it is never bumped, and its
            # inclusion clock is held at the tip until the gap below it is filled.
            if (row.market, row.batch_seq) not in self.holding:
                self.holding.add((row.market, row.batch_seq))
                log.info("transaction waits on a nonce gap", market=row.market, batch_seq=row.batch_seq,
                         nonce=row.nonce, chain_nonce=view.confirmed)
            if row.sent_block != view.tip:
                self._set_sent_block(row, view.tip)
            return False
        if rebroadcast:
            # The node took it again: the inclusion clock restarts from now (the replacement rule is
            # about transactions the node had). Refused (e.g. priced out after a base fee spike):
            # the clock runs on and the replacement below follows.
            self._set_sent_block(row, view.tip)
            return False
        if action is Watch.WAIT:
            return False
        return self._replace(row, view.tip)

    def _rebroadcast_if_lost(self, row: Row, txs: list[tuple[bytes, int, bytes]]) -> bool:
        """True when the node did not know the current transaction and accepted it again."""
        assert row.tx_hash is not None
        try:
            self.w3.eth.get_transaction(row.tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            current = next((raw for h, _, raw in txs if h == row.tx_hash), None)
            return current is not None and self._broadcast(current)
        return False

    def _set_sent_block(self, row: Row, tip: int) -> None:
        """Move the inclusion clock (not a state change: no transition record)."""
        self.db.execute("update settlement_batches set sent_block = %s where deployment = %s and market = %s"
                        " and batch_seq = %s", (tip, self.key, row.market, row.batch_seq))
        row.sent_block = tip

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
        assert row.max_fee_per_gas is not None and row.priority_fee is not None and row.nonce is not None
        fresh = suggest_fees(self.w3)
        max_fee = max(bump(row.max_fee_per_gas), fresh.max_fee_per_gas)
        tip_fee = max(bump(row.priority_fee), fresh.priority_fee)
        cap = self.settings.settlement_max_fee_wei
        if max_fee > cap:
            if row.state != ALERT:
                self._transition(row, ALERT, reason=f"replacement needs max fee {max_fee} wei > cap {cap} wei")
            return False
        batch = self._batch(row)
        estimate, refused = self._estimate(batch)
        if refused is not None:
            if refused[0] == "BatchAlreadySettled":
                return False  # the pending one (or a twin) got in: the receipt check picks it up
            estimate = None
        gas_row = self.db.execute("select gas_limit from settlement_txs where tx_hash = %s", (row.tx_hash,)).fetchone()
        gas = min(estimate * 3 // 2, self.block_gas_limit) if estimate else int(gas_row[0]) if gas_row else 0
        fees = type(fresh)(max_fee, min(tip_fee, max_fee))
        tx_hash, raw = self._sign(batch, row.nonce, fees, gas)
        nonce = row.nonce
        self.counters["bumps"] += 1
        self._transition(row, REPLACED, before=lambda: self._store_tx(row, tx_hash, raw, nonce, fees, gas),
                         tx_hash=tx_hash, sent_block=tip, max_fee_per_gas=max_fee,
                         priority_fee=fees.priority_fee, bumps=row.bumps + 1,
                         reason=f"not included after {tip - (row.sent_block or tip)} blocks: fee bump")
        self._broadcast(raw)
        return True

    def _watch_included(self, row: Row, tip: int) -> bool:
        assert row.tx_hash is not None and row.block_number is not None
        receipt = self._receipt(row.tx_hash)
        if receipt is None or bytes(receipt["blockHash"]) != row.block_hash:
            self.counters["reorgs"] += 1
            why = "receipt gone" if receipt is None else "block hash changed"
            self._transition(row, REORGED, reason=f"{why} (was block {row.block_number})")
            return True
        finalized = finalized_block(self.w3)
        depth = tip - row.block_number + 1
        if row.block_number <= finalized and depth >= self.settings.settlement_min_depth:
            block = self.w3.eth.get_block(row.block_number)
            if bytes(block["hash"]) == row.block_hash:
                self._transition(row, FINALIZED, reason=None)
                return True
        return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def resume_market(settings: Settings, deployment: Deployment, market: str) -> int:
    """Operator action after a FAILED batch: lift the halt and re-queue the failed batches as BUILT."""
    with psycopg.connect(settings.writer_dsn(), autocommit=True) as db, db.transaction():
        gone = db.execute("delete from settlement_halts where deployment = %s and market = %s",
                          (deployment.settlement, market)).rowcount
        requeued = db.execute("update settlement_batches set state = 'BUILT', reason = 'resumed by operator',"
                              " updated_at = now() where deployment = %s and market = %s and state = 'FAILED'",
                              (deployment.settlement, market)).rowcount
    if not gone and not requeued:
        raise SettlementError(f"market {market} is not halted")
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
