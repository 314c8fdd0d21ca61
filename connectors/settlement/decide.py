"""The submitter's decisions, as pure functions of its rows and a view of the chain (no I/O).

``submitter.py`` gathers the inputs (receipts, the sender's nonce counts, the tip), calls these
and carries the answer out. Unit-tested in ``tests/settlement/test_submitter_decisions.py``.

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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

BUILT, SUBMITTED, INCLUDED, FINALIZED = "BUILT", "SUBMITTED", "INCLUDED", "FINALIZED"
REPLACED, REORGED, FAILED, ALERT = "REPLACED", "REORGED", "FAILED", "ALERT"
PENDING = (SUBMITTED, REPLACED, ALERT)
ON_CHAIN = (INCLUDED, FINALIZED)


def bump(value: int) -> int:
    """value + 12.5 %, rounded up (the replacement minimum)."""
    return value + (value + 7) // 8


@dataclass(frozen=True)
class ChainView:
    """What the node says at one moment. ``confirmed``: the sender's transaction count at the
    latest block (the nonce the chain takes next). ``pool_next``: its count including the node's
    pool (on anvil this counts pooled transactions above a gap too, so it is not used in a gap)."""

    tip: int
    confirmed: int
    pool_next: int


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
    """Batches that may be sent now, in sending order: REORGED ones by their old nonce, then BUILT
    ones by (market, batch_seq). A batch may be sent when its market is not halted and its
    predecessor in the market (if this submitter has it) is on chain."""
    rows = list(rows)
    stopped = set(halted)
    states = {(r.market, r.batch_seq): r.state for r in rows}

    def ready(r: Slot) -> bool:
        prev = states.get((r.market, r.batch_seq - 1))
        return r.market not in stopped and (prev is None or prev in ON_CHAIN)

    reorged = sorted((r for r in rows if r.state == REORGED and ready(r)),
                     key=lambda r: (r.nonce is None, r.nonce or 0, r.market, r.batch_seq))
    built = sorted((r for r in rows if r.state == BUILT and ready(r)), key=lambda r: (r.market, r.batch_seq))
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
        r.state == REORGED and (r.market, r.batch_seq) == candidates[0] for r in rows)
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
        max_fee = max(bump(previous.max_fee_per_gas), fresh[0])
        priority = max(bump(previous.priority_fee), fresh[1])
        if max_fee > cap:
            return None
        return max_fee, min(priority, max_fee)
    return min(fresh[0], cap), min(fresh[1], cap)
