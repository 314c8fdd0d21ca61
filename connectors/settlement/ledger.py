"""The submitter's ledger: every SQL statement of the settlement submitter, for one deployment (the
Settlement address) and one sender (the operator address).

Tables (``connectors/timescale/migrations/050_settlement.sql``): ``settlement_batches`` (one row per
batch: its ``State`` and current transaction), ``settlement_transitions`` (every state change with
its ``settlement.status`` record: an outbox, published and then marked emitted), ``settlement_txs``
(every signed transaction, written before it is broadcast), ``settlement_senders`` (the sender's
fencing epoch and next nonce) and ``settlement_halts`` (markets halted after a FAILED batch).

Invariants:

* **One holder per sender.** ``acquire`` takes a session advisory lock on the sender address (a
  second holder is refused) and bumps the sender's epoch; ``reconnect`` re-takes the lock and
  refuses (``Fenced``) when the epoch moved meanwhile.
* **A state change is one transaction** that first locks the sender's row and checks the epoch
  (``Fenced``, and nothing is written, when a newer holder exists), then writes the records that
  must not outlive a fence (write-ahead transaction, halt), the batch row and its transition row.
* **Only the moves of** ``decide.MOVES``: any other is a bug and raises ``IllegalMove`` before a
  write.
* **Status records** are published in transition order, at least once, by one publisher at a
  time (a transaction-scoped advisory lock per deployment): the submitter and an operator's
  ``resume`` never publish the same record concurrently.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

import psycopg

from connectors.settlement.decide import MOVES, State
from connectors.settlement.errors import SettlementError
from streams.observability import SETTLEMENT_BATCHES, get_logger
from streams.serde.codec import Codec
from streams.serde.topics import SETTLEMENT_STATUS

log = get_logger("settlement.submitter")

RESUMED = "resumed by operator"


class Fenced(SettlementError):
    """A newer submitter holds this sender: stop writing."""


class IllegalMove(SettlementError):
    """A state change that ``decide.MOVES`` does not allow (a bug: nothing was written)."""


@dataclass
class Row:
    """One row of ``settlement_batches`` (the fields the submitter reads)."""

    market: str
    batch_seq: int
    first_trade_id: int
    last_trade_id: int
    batch_hash: bytes
    record: bytes
    state: State
    bumps: int
    nonce: int | None
    tx_hash: bytes | None
    sent_block: int | None
    max_fee_per_gas: int | None
    priority_fee: int | None
    block_number: int | None
    block_hash: bytes | None
    gas_used: int | None

    @classmethod
    def columns(cls) -> str:
        return ", ".join(f.name for f in fields(cls))

    @classmethod
    def of(cls, values: Sequence[Any]) -> Row:
        """From a ``select {Row.columns()}`` row: wei amounts (numeric) as int, bytea as bytes,
        the state as ``State``."""
        row = dict(zip((f.name for f in fields(cls)), values, strict=True))
        for name in ("max_fee_per_gas", "priority_fee"):
            row[name] = int(row[name]) if row[name] is not None else None
        for name in ("batch_hash", "record", "tx_hash", "block_hash"):
            row[name] = bytes(row[name]) if row[name] is not None else None
        row["state"] = State(row["state"])
        return cls(**row)


@dataclass(frozen=True)
class SignedTx:
    """A signed ``settleBatch`` transaction (fees in wei)."""

    tx_hash: bytes
    raw: bytes
    nonce: int
    max_fee_per_gas: int
    priority_fee: int
    gas: int


Publish = Callable[[Sequence[tuple[str, bytes]]], bool]
"""Sends (market, settlement.status value) records in order; True once all are acknowledged."""


class Ledger:
    """The submitter's state in PostgreSQL (see the module docstring for the invariants). ``db``
    is an autocommit session; ``lock_db`` holds the sender's advisory lock while acquired."""

    def __init__(self, dsn: str, deployment: str, sender: str, codec: Codec) -> None:
        self.dsn = dsn
        self.deployment = deployment
        self.sender = sender
        self.codec = codec
        self.epoch = 0
        self.lock_db: psycopg.Connection[Any] | None = None
        try:
            self.db = self._connect()
        except psycopg.OperationalError as error:
            raise SettlementError(f"database unreachable: {first_line(error)}") from None

    # -- sessions and fencing --------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        # Keepalives: a server that vanishes without closing the socket is noticed in seconds.
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5, keepalives=1, keepalives_idle=5,
                               keepalives_interval=2, keepalives_count=2)

    def _try_lock(self, conn: psycopg.Connection[Any]) -> bool:
        got = conn.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))",
                           (f"xchg-settle:{self.sender}",)).fetchone()
        return bool(got and got[0])

    def acquire(self) -> int:
        """Take the sender (advisory lock, epoch + 1); the new epoch."""
        try:
            self.lock_db = self._connect()
        except psycopg.OperationalError as error:
            raise SettlementError(f"database unreachable: {first_line(error)}") from None
        if not self._try_lock(self.lock_db):
            self.lock_db.close()
            raise SettlementError(f"another submitter holds sender {self.sender} (advisory lock)")
        row = self.db.execute(
            "insert into settlement_senders (address, epoch) values (%s, 1) on conflict (address) do update"
            " set epoch = settlement_senders.epoch + 1, updated_at = now() returning epoch",
            (self.sender,)).fetchone()
        assert row is not None
        self.epoch = int(row[0])
        return self.epoch

    def observe(self) -> int:
        """Act beside the holder (an operator): take the sender's current epoch (0 when nobody ever
        held it) without the lock; every write is then refused once a newer holder exists."""
        row = self.db.execute("select epoch from settlement_senders where address = %s", (self.sender,)).fetchone()
        self.epoch = int(row[0]) if row else 0
        return self.epoch

    def reconnect(self) -> None:
        """New sessions after a database failure. Raises a psycopg error while the database is
        unreachable, and ``Fenced`` when resuming is not safe: the sender's advisory lock (lost
        with the old session) is held by someone else, or its epoch moved (another submitter took
        over during the outage)."""
        self.close()
        self.db = self._connect()
        if self.epoch == 0:
            return  # never acquired (tools and tests that only read)
        lock = self._connect()
        if not self._try_lock(lock):
            lock.close()
            raise Fenced(f"sender {self.sender} was taken by another submitter during the database "
                         "outage (advisory lock held)")
        self.lock_db = lock
        row = self.db.execute("select epoch from settlement_senders where address = %s", (self.sender,)).fetchone()
        if row is None or int(row[0]) != self.epoch:
            raise Fenced(f"sender {self.sender} was taken over during the database outage "
                         f"(epoch {row and row[0]} != {self.epoch})")

    def close(self) -> None:
        """Close both sessions; safe after a database failure (broken sessions are just dropped)."""
        for conn in (self.lock_db, self.db):
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self.lock_db = None

    def _check_epoch(self, cur: psycopg.Cursor[Any]) -> None:
        row = cur.execute("select epoch from settlement_senders where address = %s for update",
                          (self.sender,)).fetchone()
        if row is None or int(row[0]) != self.epoch:
            raise Fenced(f"sender {self.sender} was taken over (epoch {row and row[0]} != {self.epoch})")

    # -- state changes ---------------------------------------------------------------------------
    def ingest(self, market: str, batch_seq: int, first_trade_id: int, last_trade_id: int, batch_hash: bytes,
               record: bytes) -> bool:
        """Store a new batch as BUILT with its transition row; False when it is already stored
        (idempotent on (deployment, market, batch_seq))."""
        with self.db.transaction(), self.db.cursor() as cur:
            cur.execute(
                "insert into settlement_batches (deployment, market, batch_seq, first_trade_id, last_trade_id,"
                " batch_hash, record, state) values (%s, %s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
                (self.deployment, market, batch_seq, first_trade_id, last_trade_id, batch_hash, record,
                 State.BUILT.value))
            if not cur.rowcount:
                return False
            self._record(cur, market, batch_seq, State.BUILT, {"bumps": 0})
        return True

    def move(self, row: Row, state: State, **changes: Any) -> None:
        """``row`` to ``state``, with ``changes`` to its columns (``reason`` among them)."""
        self._move(row, state, None, changes)

    def submit(self, row: Row, tx: SignedTx, sent_block: int) -> None:
        """BUILT / REORGED → SUBMITTED with ``tx`` written ahead (its row and the sender's next
        nonce) in the same transaction: broadcast only after this returns."""
        def ahead(cur: psycopg.Cursor[Any]) -> None:
            cur.execute("update settlement_senders set next_nonce = %s, updated_at = now() where address = %s",
                        (tx.nonce + 1, self.sender))
            self._store_tx(cur, row, tx)

        self._move(row, State.SUBMITTED, ahead, {
            "nonce": tx.nonce, "tx_hash": tx.tx_hash, "sent_block": sent_block, "max_fee_per_gas": tx.max_fee_per_gas,
            "priority_fee": tx.priority_fee, "block_number": None, "block_hash": None, "gas_used": None,
            "reason": None})

    def replace(self, row: Row, tx: SignedTx, sent_block: int, reason: str) -> None:
        """A pending row → REPLACED by ``tx`` (same nonce, bumped fees), written ahead."""
        self._move(row, State.REPLACED, lambda cur: self._store_tx(cur, row, tx), {
            "tx_hash": tx.tx_hash, "sent_block": sent_block, "max_fee_per_gas": tx.max_fee_per_gas,
            "priority_fee": tx.priority_fee, "bumps": row.bumps + 1, "reason": reason})

    def fail(self, row: Row, reason: str) -> None:
        """``row`` → FAILED and its market halted (the first halt of a market is kept)."""
        def halt(cur: psycopg.Cursor[Any]) -> None:
            cur.execute("insert into settlement_halts (deployment, market, batch_seq, reason) values (%s, %s, %s, %s)"
                        " on conflict (deployment, market) do nothing",
                        (self.deployment, row.market, row.batch_seq, reason))

        self._move(row, State.FAILED, halt, {"reason": reason})

    def resume(self, market: str) -> int:
        """The operator's move: lift ``market``'s halt and move each of its FAILED batches back to
        BUILT (reason "resumed by operator"), one transaction under the epoch check, each with its
        transition row; the number of batches re-queued. ``SettlementError`` when the market is
        neither halted nor has a FAILED batch."""
        with self.db.transaction(), self.db.cursor() as cur:
            held = cur.execute("select epoch from settlement_senders where address = %s for update",
                               (self.sender,)).fetchone()
            failed = [Row.of(r) for r in cur.execute(
                f"select {Row.columns()} from settlement_batches where deployment = %s and market = %s"
                " and state = %s order by batch_seq for update", (self.deployment, market, State.FAILED.value))]
            lifted = cur.execute("delete from settlement_halts where deployment = %s and market = %s",
                                 (self.deployment, market)).rowcount
            if not failed and not lifted:
                raise SettlementError(f"market {market} is not halted")
            if held is None or int(held[0]) != self.epoch:
                raise Fenced(f"sender {self.sender} was taken over (epoch {held and held[0]} != {self.epoch})")
            for row in failed:
                self._write_move(cur, row, State.BUILT, {"reason": RESUMED})
        for row in failed:
            self._moved(row, State.BUILT, {"reason": RESUMED})
        return len(failed)

    def _move(self, row: Row, state: State, ahead: Callable[[psycopg.Cursor[Any]], None] | None,
              changes: dict[str, Any]) -> None:
        """The fencing check, ``ahead`` (records that must not outlive a fence), the batch row and
        its transition row: one transaction. ``row`` is updated once it committed."""
        with self.db.transaction(), self.db.cursor() as cur:
            self._check_epoch(cur)
            if ahead is not None:
                ahead(cur)
            self._write_move(cur, row, state, changes)
        self._moved(row, state, changes)

    def _write_move(self, cur: psycopg.Cursor[Any], row: Row, state: State, changes: dict[str, Any]) -> None:
        if state not in MOVES[row.state]:
            raise IllegalMove(f"{row.market} #{row.batch_seq}: {row.state} -> {state} is not a move of decide.MOVES")
        columns = {"state": state.value, **changes}
        sets = ", ".join(f"{k} = %s" for k in columns)
        cur.execute(f"update settlement_batches set {sets}, updated_at = now()"
                    " where deployment = %s and market = %s and batch_seq = %s",
                    (*columns.values(), self.deployment, row.market, row.batch_seq))
        status = {"tx_hash": row.tx_hash, "nonce": row.nonce, "block_number": row.block_number,
                  "block_hash": row.block_hash, "gas_used": row.gas_used, "max_fee_per_gas": row.max_fee_per_gas,
                  "bumps": row.bumps, **changes}
        if state in (State.BUILT, State.SUBMITTED, State.REORGED):  # not (or no longer) in a block
            status.update(block_number=changes.get("block_number"), block_hash=changes.get("block_hash"),
                          gas_used=changes.get("gas_used"))
        self._record(cur, row.market, row.batch_seq, state, status)

    def _moved(self, row: Row, state: State, changes: dict[str, Any]) -> None:
        row.state = state
        for k, v in changes.items():
            setattr(row, k, v)
        log.info("transition", market=row.market, batch_seq=row.batch_seq, state=state.value,
                 **{k: (v.hex() if isinstance(v, bytes) else v) for k, v in changes.items()})

    def _record(self, cur: psycopg.Cursor[Any], market: str, batch_seq: int, state: State,
                status: dict[str, Any]) -> None:
        record = {
            "market": market, "batch_seq": batch_seq, "state": state.value,
            "tx_hash": status.get("tx_hash"), "nonce": status.get("nonce"),
            "block_number": status.get("block_number"), "block_hash": status.get("block_hash"),
            "gas_used": status.get("gas_used"),
            "max_fee_per_gas": Decimal(status["max_fee_per_gas"]) if status.get("max_fee_per_gas") else None,
            "bumps": int(status.get("bumps") or 0), "reason": status.get("reason"),
            "ts": int(time.time() * 1000),
        }
        cur.execute(
            "insert into settlement_transitions (deployment, market, batch_seq, state, record) values (%s, %s, %s, %s, %s)",
            (self.deployment, market, batch_seq, state.value, self.codec.encode(SETTLEMENT_STATUS, record)))
        SETTLEMENT_BATCHES.labels(market, state.value).inc()

    def _store_tx(self, cur: psycopg.Cursor[Any], row: Row, tx: SignedTx) -> None:
        cur.execute(
            "insert into settlement_txs (tx_hash, deployment, market, batch_seq, sender, nonce, max_fee_per_gas,"
            " priority_fee, gas_limit, raw) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
            (tx.tx_hash, self.deployment, row.market, row.batch_seq, self.sender, tx.nonce, tx.max_fee_per_gas,
             tx.priority_fee, tx.gas, tx.raw))

    def set_sent_block(self, row: Row, tip: int) -> None:
        """Move the inclusion clock (not a state change: no transition row)."""
        self.db.execute("update settlement_batches set sent_block = %s where deployment = %s and market = %s"
                        " and batch_seq = %s", (tip, self.deployment, row.market, row.batch_seq))
        row.sent_block = tip

    # -- status records --------------------------------------------------------------------------
    def publish(self, send: Publish) -> int:
        """Hand the transition records not yet emitted to ``send`` in order and mark them emitted
        when it says they are acknowledged; the number handed. 0 without a call when another
        publisher of this deployment is at work (it, or the next call, takes them)."""
        with self.db.transaction():
            got = self.db.execute("select pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                                  (f"xchg-settle-status:{self.deployment}",)).fetchone()
            if not (got and got[0]):
                return 0
            pending = self.db.execute("select id, market, record from settlement_transitions where deployment = %s"
                                      " and not emitted order by id", (self.deployment,)).fetchall()
            if not pending:
                return 0
            if send([(market, bytes(record)) for _, market, record in pending]):
                self.db.execute("update settlement_transitions set emitted = true where id = any(%s)",
                                ([r[0] for r in pending],))
        return len(pending)

    # -- queries ---------------------------------------------------------------------------------
    def rows(self, states: Iterable[State] | None = None) -> list[Row]:
        sql = f"select {Row.columns()} from settlement_batches where deployment = %s"
        params: list[Any] = [self.deployment]
        if states is not None:
            sql += " and state = any(%s)"
            params.append([State(s).value for s in states])
        return [Row.of(r) for r in self.db.execute(sql + " order by market, batch_seq", params).fetchall()]

    def halted(self) -> set[str]:
        return {r[0] for r in self.db.execute("select market from settlement_halts where deployment = %s",
                                              (self.deployment,)).fetchall()}

    def halts(self) -> list[tuple[str, int, str]]:
        """(market, batch_seq, reason) of each halted market."""
        return [(m, int(s), r) for m, s, r in self.db.execute(
            "select market, batch_seq, reason from settlement_halts where deployment = %s order by market",
            (self.deployment,)).fetchall()]

    def txs(self, row: Row) -> list[tuple[bytes, int, bytes]]:
        """(tx_hash, nonce, raw) of every transaction signed for ``row``'s batch, oldest first."""
        return [(bytes(h), int(n), bytes(raw)) for h, n, raw in self.db.execute(
            "select tx_hash, nonce, raw from settlement_txs where deployment = %s and market = %s and batch_seq = %s"
            " order by created_at", (self.deployment, row.market, row.batch_seq)).fetchall()]

    def gas_limit(self, tx_hash: bytes | None) -> int | None:
        row = self.db.execute("select gas_limit from settlement_txs where tx_hash = %s", (tx_hash,)).fetchone()
        return int(row[0]) if row else None


def first_line(error: BaseException) -> str:
    """The first line of an error's text (psycopg errors span several), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
