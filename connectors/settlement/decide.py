"""The submitter's decisions, as pure functions of its rows and a view of the chain (no I/O).

``submitter.py`` gathers the inputs (receipts, the sender's nonce counts, the tip), calls these
and carries the answer out through the ledger (``ledger.py``). Unit-tested in
``tests/settlement/test_submitter_decisions.py`` (nonces, fees) and
``tests/unit/settlement/test_next_action.py`` (one case per transition).

**States** (``State``, the symbols of ``xchg.v1.SettlementState``, stored as their text) and the
moves between them (``MOVES``; the ledger refuses any other)::

    BUILT, REORGED ──send──► SUBMITTED ──receipt ok──► INCLUDED ──final──► FINALIZED
    SUBMITTED, REPLACED, ALERT ──not included in N blocks──► REPLACED, or ALERT over the fee cap
    SUBMITTED, REPLACED, ALERT ──nonce used, no receipt of ours, no BatchSettled──► REORGED
    INCLUDED ──receipt gone / block hash changed──► REORGED
    BUILT, REORGED, pending ──refused / reverted, no BatchSettled of this hash──► FAILED
    BUILT, REORGED, pending ──refused / reverted, BatchSettled of this hash found──► INCLUDED
    FAILED ──operator: ``xchg settle resume MARKET``──► BUILT

``next_action`` says what to do for one stored row given what the chain says about it;
``after_check`` and ``after_refusal`` finish the decisions that need one more look at the chain
(the ``BatchSettled`` event) or the contract's answer to a send.

**Nonce gaps.** A reorg removes included transactions, and this node (anvil) does not re-queue
them: the chain's count of the sender's mined transactions (``confirmed``) drops below the nonce of
a transaction still pending, which then cannot be mined until every nonce below it is used again.
The rules that follow from that:

* Only the transaction whose nonce equals ``confirmed`` can be mined next. Any pending transaction
  above it *waits on a gap*: it is never fee-bumped (no fee can get it mined), and its inclusion
  clock is held at the tip, so the replacement rule counts only blocks in which it could have
  been mined.
* At most one transaction of ours is minable at a time (the old "one in flight" rule, restated):
  nothing new is sent while the transaction holding ``confirmed`` is in flight.
* While a gap exists, the next send fills it at nonce ``confirmed``. Reorged batches go first, in
  the order of their old nonces; in the usual case the gap consists exactly of those nonces, so
  each one is re-signed at its own old nonce and the chain replays the original order (per market
  that is the batch order the contract requires).
* A gap that no batch can fill (a transaction of the key that is not a batch was reorged out)
  is filled with a no-op: a 0-value transfer to the sender itself at nonce ``confirmed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, Protocol


class State(StrEnum):
    """A batch's submitter state. Each value is its name, a symbol of ``xchg.v1.SettlementState``
    and the text stored in ``settlement_batches.state`` and ``settlement_transitions.state``."""

    BUILT = "BUILT"  # stored, not sent (or re-queued by the operator after FAILED)
    SUBMITTED = "SUBMITTED"  # signed at a nonce, written ahead, broadcast
    INCLUDED = "INCLUDED"  # a receipt of ours (or the checked BatchSettled event) in a block
    FINALIZED = "FINALIZED"  # final: at or below the finalized block and MIN_DEPTH deep, same hash
    REPLACED = "REPLACED"  # a fee-bumped replacement at the same nonce was sent
    REORGED = "REORGED"  # off the chain again: re-signed first, in old-nonce order
    FAILED = "FAILED"  # refused or reverted and not on chain: the market halts
    ALERT = "ALERT"  # a replacement would pass the fee cap: keeps watching, an operator acts


PENDING = frozenset({State.SUBMITTED, State.REPLACED, State.ALERT})
ON_CHAIN = frozenset({State.INCLUDED, State.FINALIZED})
_OFF_CHAIN_OUTCOMES = frozenset({State.SUBMITTED, State.INCLUDED, State.FAILED})

MOVES: Mapping[State, frozenset[State]] = {
    State.BUILT: _OFF_CHAIN_OUTCOMES,
    State.REORGED: _OFF_CHAIN_OUTCOMES,
    State.SUBMITTED: frozenset({State.INCLUDED, State.REPLACED, State.ALERT, State.REORGED, State.FAILED}),
    State.REPLACED: frozenset({State.INCLUDED, State.REPLACED, State.ALERT, State.REORGED, State.FAILED}),
    State.ALERT: frozenset({State.INCLUDED, State.REPLACED, State.REORGED, State.FAILED}),
    State.INCLUDED: frozenset({State.REORGED, State.FINALIZED}),
    State.FINALIZED: frozenset(),
    State.FAILED: frozenset({State.BUILT}),
}
"""Every state a batch may move to from each state: the diagram in the module docstring."""


def bump(value: int) -> int:
    """value + 12.5 %, rounded up (the replacement minimum)."""
    return value + (value + 7) // 8


def bumped(current: tuple[int, int], fresh: tuple[int, int]) -> tuple[int, int]:
    """(max fee, tip) of a replacement of a transaction with fees ``current``: each raised by at
    least 12.5 % (``bump``), or to the ``fresh`` suggestion when higher; the tip never above the
    max fee. The caller compares the max fee with the cap."""
    max_fee = max(bump(current[0]), fresh[0])
    return max_fee, min(max(bump(current[1]), fresh[1]), max_fee)


@dataclass(frozen=True)
class ChainView:
    """What the node says at one moment. ``confirmed``: the sender's transaction count at the
    latest block (the nonce the chain takes next). ``pool_next``: its count including the node's
    pool (on anvil this counts pooled transactions above a gap too, so it is not used in a gap).
    ``finalized``: the number of the ``finalized`` block, -1 when the node has none."""

    tip: int
    confirmed: int
    pool_next: int
    finalized: int = -1


class Slot(Protocol):
    """The fields of a batch row the decisions read."""

    @property
    def market(self) -> str: ...
    @property
    def batch_seq(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def nonce(self) -> int | None: ...


class Watch(Enum):
    """What to do with a pending transaction."""

    INCLUDED = "included"  # a receipt of ours with status 1
    REVERTED = "reverted"  # a receipt with status 0: success after a check, or FAILED
    CONSUMED = "consumed"  # its nonce is mined without a receipt of ours: settled elsewhere, or lost
    HOLD = "hold"  # waits on a nonce gap: no bump; hold the inclusion clock at the tip
    WAIT = "wait"  # minable, not yet replace_after blocks old
    REPLACE = "replace"  # minable and not included for replace_after blocks: fee bump


def watch_pending(receipt_status: int | None, nonce: int, sent_block: int | None, view: ChainView,
                  replace_after: int) -> Watch:
    """The step for a pending transaction with nonce ``nonce`` sent at ``sent_block``."""
    if receipt_status is not None:
        return Watch.INCLUDED if receipt_status == 1 else Watch.REVERTED
    if view.confirmed > nonce:
        return Watch.CONSUMED
    if nonce > view.confirmed:
        return Watch.HOLD
    # A tip below sent_block (a reorg to a shorter chain) counts as no block waited.
    if sent_block is None or view.tip - sent_block < replace_after:
        return Watch.WAIT
    return Watch.REPLACE


@dataclass(frozen=True)
class SendPlan:
    """Send the first of ``candidates`` (market, batch_seq) that the contract accepts, at ``nonce``.
    ``fill_gap``: a gap exists, so if no candidate can be sent the nonce is filled with a no-op."""

    nonce: int
    candidates: tuple[tuple[str, int], ...]
    fill_gap: bool


def sendable(rows: Iterable[Slot], halted: Iterable[str]) -> list[tuple[str, int]]:
    """Batches that may be sent now, in sending order: REORGED ones by their old nonce, then BUILT ones
    by (market, batch_seq). A batch may be sent when its market is not halted and its
    predecessor in the market (if this submitter has it) is on chain."""
    rows = list(rows)
    stopped = set(halted)
    states = {(r.market, r.batch_seq): r.state for r in rows}

    def ready(r: Slot) -> bool:
        prev = states.get((r.market, r.batch_seq - 1))
        return r.market not in stopped and (prev is None or prev in ON_CHAIN)

    reorged = sorted((r for r in rows if r.state == State.REORGED and ready(r)),
                     key=lambda r: (r.nonce is None, r.nonce or 0, r.market, r.batch_seq))
    built = sorted((r for r in rows if r.state == State.BUILT and ready(r)), key=lambda r: (r.market, r.batch_seq))
    return [(r.market, r.batch_seq) for r in (*reorged, *built)]


def plan_send(rows: Sequence[Slot], halted: Iterable[str], view: ChainView) -> SendPlan | None:
    """The next send, or None while a transaction of ours that can be mined next is in flight.

    The nonce is ``confirmed`` when a gap exists (every pending transaction of ours is above it) or
    when a reorged batch goes first (its predecessors in nonce order are on chain, so the chain's
    count is its slot); otherwise the node's pending count, which steps over pooled transactions of
    the key that are not ours."""
    held = sorted(r.nonce for r in rows if r.state in PENDING and r.nonce is not None)
    if held and held[0] <= view.confirmed:
        return None  # minable (or just mined, which the next watch records): one at a time
    gap = bool(held)
    candidates = tuple(sendable(rows, halted))
    reorged_first = bool(candidates) and any(
        r.state == State.REORGED and (r.market, r.batch_seq) == candidates[0] for r in rows)
    nonce = view.confirmed if gap or reorged_first else max(view.confirmed, view.pool_next)
    if not candidates and not gap:
        return None
    return SendPlan(nonce, candidates, gap)


@dataclass(frozen=True)
class Filler:
    """The last no-op sent to fill a gap (kept in memory: it changes no batch state, so a restart
    that forgets it at worst sends another one at the same nonce, which only one can use)."""

    nonce: int
    sent_block: int
    max_fee_per_gas: int
    priority_fee: int


def filler_fees(previous: Filler | None, nonce: int, tip: int, fresh: tuple[int, int], replace_after: int,
                cap: int) -> tuple[int, int] | None:
    """(max fee, tip) for a gap filler at ``nonce``, or None to leave the one in flight alone.

    A new nonce takes the fresh suggestion; the same nonce is re-sent only after ``replace_after``
    blocks, with both fees raised by at least 12.5 % (a replacement the node accepts), and never
    above ``cap``."""
    if previous is not None and previous.nonce == nonce:
        if tip - previous.sent_block < replace_after:
            return None
        fees = bumped((previous.max_fee_per_gas, previous.priority_fee), fresh)
        return None if fees[0] > cap else fees
    return min(fresh[0], cap), min(fresh[1], cap)


# -- one row: what to do ----------------------------------------------------------------------------

class Action(Enum):
    """What the submitter does for one batch row."""

    SEND = "send"  # BUILT / REORGED: a candidate; ``plan_send`` orders candidates and picks the nonce
    REPLACE = "replace"  # fee bump at the same nonce (REPLACED; ALERT when it would pass the cap)
    MARK_INCLUDED = "mark included"  # a receipt of ours with status 1: INCLUDED
    CHECK_SETTLED = "check settled"  # look for the BatchSettled event of the batch hash, then ``after_check``
    MARK_REORGED = "mark reorged"  # REORGED
    FINALIZE = "finalize"  # FINALIZED
    FAIL = "fail"  # FAILED, and the market halts
    HOLD = "hold"  # waits on a nonce gap: no bump, the inclusion clock is held at the tip
    WAIT = "wait"  # nothing to do yet
    DONE = "done"  # FINALIZED: nothing more, ever


@dataclass(frozen=True)
class Decision:
    """``action`` for a row; ``state``: the state it moves the row to (for CHECK_SETTLED: the one
    taken when no BatchSettled event is found); ``reason``: the transition's reason (for
    CHECK_SETTLED: why the check is made). ``resend``: the node does not know the row's current
    transaction, which is broadcast again first (an accepted rebroadcast restarts the inclusion
    clock instead of a replacement)."""

    action: Action
    state: State | None = None
    reason: str | None = None
    resend: bool = False


@dataclass(frozen=True)
class Receipt:
    """A receipt of one of a batch's transactions."""

    tx_hash: bytes
    status: int
    block_number: int
    block_hash: bytes
    gas_used: int
    effective_gas_price: int


@dataclass(frozen=True)
class Seen:
    """What the chain says about one row. Pending rows: ``receipt`` is the newest of the batch's
    transactions that has one, ``on_node`` whether the node knows the current transaction.
    INCLUDED rows: ``receipt`` is the recorded transaction's, ``canonical_hash`` the hash of the
    block now at the recorded height (None when there is none)."""

    receipt: Receipt | None = None
    on_node: bool = True
    canonical_hash: bytes | None = None


@dataclass(frozen=True)
class Policy:
    """``replace_after``: blocks a minable transaction may wait before its fee is bumped;
    ``min_depth``: blocks, counting its own, under which an included batch is final."""

    replace_after: int
    min_depth: int


class Stored(Slot, Protocol):
    """The fields of a stored batch row that ``next_action`` reads."""

    @property
    def sent_block(self) -> int | None: ...
    @property
    def block_number(self) -> int | None: ...
    @property
    def block_hash(self) -> bytes | None: ...


_WATCHED = {Watch.HOLD: Action.HOLD, Watch.WAIT: Action.WAIT, Watch.REPLACE: Action.REPLACE}


def next_action(row: Stored, seen: Seen, view: ChainView, policy: Policy) -> Decision:
    """What to do for ``row`` given what the chain says about it (``seen``) and at this moment
    (``view``). A row moves at most one state per decision; the state is always one of
    ``MOVES[row.state]``."""
    state = State(row.state)
    if state in (State.BUILT, State.REORGED):
        return Decision(Action.SEND, State.SUBMITTED)
    if state in PENDING:
        assert row.nonce is not None
        receipt = seen.receipt
        watch = watch_pending(receipt.status if receipt else None, row.nonce, row.sent_block, view,
                              policy.replace_after)
        if watch is Watch.INCLUDED:
            return Decision(Action.MARK_INCLUDED, State.INCLUDED)
        if watch is Watch.REVERTED:
            assert receipt is not None
            return Decision(Action.CHECK_SETTLED, State.FAILED, f"transaction {receipt.tx_hash.hex()} reverted")
        if watch is Watch.CONSUMED:
            # The nonce is used but none of our transactions has a receipt: settled by another
            # transaction (checked) or lost; either way the send path decides (estimate first).
            return Decision(Action.CHECK_SETTLED, State.REORGED, "nonce consumed by another transaction")
        return Decision(_WATCHED[watch], State.REPLACED if watch is Watch.REPLACE else None, resend=not seen.on_node)
    if state is State.INCLUDED:
        assert row.block_number is not None
        receipt = seen.receipt
        if receipt is None or receipt.block_hash != row.block_hash:
            why = "receipt gone" if receipt is None else "block hash changed"
            return Decision(Action.MARK_REORGED, State.REORGED, f"{why} (was block {row.block_number})")
        deep = view.tip - row.block_number + 1 >= policy.min_depth
        if row.block_number <= view.finalized and deep and seen.canonical_hash == row.block_hash:
            return Decision(Action.FINALIZE, State.FINALIZED)
        return Decision(Action.WAIT)
    if state is State.FAILED:
        return Decision(Action.WAIT, reason="halted until `xchg settle resume MARKET`")
    return Decision(Action.DONE)


def after_check(row: Slot, check: Decision, settled: bool) -> Decision:
    """The end of a CHECK_SETTLED decision: INCLUDED when the chain holds a BatchSettled event with
    the batch's hash (settled exactly once, by whichever transaction), else ``check.state``."""
    assert check.action is Action.CHECK_SETTLED and check.state is not None
    if settled:
        return Decision(Action.MARK_INCLUDED, State.INCLUDED, f"already settled on chain, checked: {check.reason}")
    if check.state is State.REORGED:
        return Decision(Action.MARK_REORGED, State.REORGED, f"nonce {row.nonce} consumed without a receipt of ours")
    return Decision(Action.FAIL, State.FAILED,
                    f"{check.reason}, but no BatchSettled event with this batch hash on chain")


class Ranged(Protocol):
    """A batch row's first trade id (what a ``SequenceGap`` refusal is compared with)."""

    @property
    def first_trade_id(self) -> int: ...


def after_refusal(row: Ranged, error: str, args: tuple[Any, ...]) -> Decision:
    """The contract refused to settle the batch (custom error ``error(args)``) when it was
    estimated for a send: already settled → check the event; an earlier batch of the market not on
    chain (``SequenceGap`` below this batch's first trade) → wait for it; anything else → FAILED."""
    if error == "BatchAlreadySettled":
        return Decision(Action.CHECK_SETTLED, State.FAILED, f"BatchAlreadySettled{args}")
    if error == "SequenceGap" and args and int(args[1]) < row.first_trade_id:
        return Decision(Action.WAIT)
    return Decision(Action.FAIL, State.FAILED, f"contract refused the batch: {error}{args}")
