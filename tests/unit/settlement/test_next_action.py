"""``decide.next_action`` and the decisions that finish it, one case per transition, without any
service: a stored row and what the chain says about it in, what to do out."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from connectors.settlement.decide import (
    MOVES,
    PENDING,
    Action,
    ChainView,
    Decision,
    Policy,
    Receipt,
    Seen,
    State,
    after_check,
    after_refusal,
    bump,
    bumped,
    next_action,
)
from streams.settings import PROJECT_ROOT

POLICY = Policy(replace_after=3, min_depth=4)
HASH = b"\x11" * 32
OTHER = b"\x22" * 32
TX = b"\xaa" * 32


@dataclass
class Stored:
    state: str
    nonce: int | None = 5
    sent_block: int | None = 90
    block_number: int | None = None
    block_hash: bytes | None = None
    market: str = "BTC-USD"
    batch_seq: int = 1
    first_trade_id: int = 1001


def receipt(status: int = 1, block_hash: bytes = HASH, block_number: int = 95) -> Receipt:
    return Receipt(TX, status, block_number, block_hash, gas_used=2_000_000, effective_gas_price=3 * 10**9)


def view(tip: int = 100, confirmed: int = 5, finalized: int = -1) -> ChainView:
    return ChainView(tip=tip, confirmed=confirmed, pool_next=confirmed, finalized=finalized)


def included(block_number: int = 95) -> Stored:
    return Stored(State.INCLUDED, block_number=block_number, block_hash=HASH)


# (case, row, seen, view, action, state): every transition next_action can decide.
TABLE = [
    ("BUILT is sent", Stored(State.BUILT, nonce=None, sent_block=None), Seen(), view(),
     Action.SEND, State.SUBMITTED),
    ("REORGED is re-sent", Stored(State.REORGED), Seen(), view(), Action.SEND, State.SUBMITTED),
    ("a receipt of ours with status 1", Stored(State.SUBMITTED), Seen(receipt(1)), view(confirmed=6),
     Action.MARK_INCLUDED, State.INCLUDED),
    ("a replacement's receipt decides too", Stored(State.REPLACED), Seen(receipt(1)), view(confirmed=6),
     Action.MARK_INCLUDED, State.INCLUDED),
    ("an ALERT transaction can still get in", Stored(State.ALERT), Seen(receipt(1)), view(confirmed=6),
     Action.MARK_INCLUDED, State.INCLUDED),
    ("a reverted receipt: checked, else FAILED", Stored(State.SUBMITTED), Seen(receipt(0)), view(confirmed=6),
     Action.CHECK_SETTLED, State.FAILED),
    ("the nonce used without a receipt of ours: checked, else REORGED", Stored(State.SUBMITTED),
     Seen(on_node=False), view(confirmed=6), Action.CHECK_SETTLED, State.REORGED),
    ("above a nonce gap: hold, never bump", Stored(State.SUBMITTED, sent_block=0), Seen(), view(confirmed=3),
     Action.HOLD, None),
    ("minable and young: wait", Stored(State.SUBMITTED, sent_block=98), Seen(), view(), Action.WAIT, None),
    ("minable for replace_after blocks: fee bump", Stored(State.SUBMITTED, sent_block=97), Seen(), view(),
     Action.REPLACE, State.REPLACED),
    ("a replaced one is bumped again", Stored(State.REPLACED, sent_block=90), Seen(), view(),
     Action.REPLACE, State.REPLACED),
    ("ALERT keeps trying (the cap may have been raised)", Stored(State.ALERT, sent_block=90), Seen(), view(),
     Action.REPLACE, State.REPLACED),
    ("INCLUDED, receipt gone", included(), Seen(), view(finalized=99), Action.MARK_REORGED, State.REORGED),
    ("INCLUDED, block hash changed", included(), Seen(receipt(1, OTHER)), view(finalized=99),
     Action.MARK_REORGED, State.REORGED),
    ("INCLUDED, finalized and deep, same hash", included(), Seen(receipt(), canonical_hash=HASH),
     view(finalized=95), Action.FINALIZE, State.FINALIZED),
    ("INCLUDED, exactly MIN_DEPTH deep counting its own block", included(97),
     Seen(receipt(block_number=97), canonical_hash=HASH), view(tip=100, finalized=99),
     Action.FINALIZE, State.FINALIZED),
    ("INCLUDED, one block short of MIN_DEPTH", included(98), Seen(receipt(block_number=98), canonical_hash=HASH),
     view(tip=100, finalized=99), Action.WAIT, None),
    ("INCLUDED, deep but above the finalized block", included(), Seen(receipt(), canonical_hash=HASH),
     view(finalized=94), Action.WAIT, None),
    ("INCLUDED, no finalized block (young chain, just after anvil_reorg)", included(),
     Seen(receipt(), canonical_hash=HASH), view(finalized=-1), Action.WAIT, None),
    ("INCLUDED, another block now at that height", included(), Seen(receipt(), canonical_hash=OTHER),
     view(finalized=99), Action.WAIT, None),
    ("FAILED waits for the operator", Stored(State.FAILED), Seen(), view(), Action.WAIT, None),
    ("FINALIZED is done", Stored(State.FINALIZED, block_number=95, block_hash=HASH), Seen(), view(finalized=99),
     Action.DONE, None),
]


@pytest.mark.parametrize(("row", "seen", "chain", "action", "state"), [case[1:] for case in TABLE],
                         ids=[case[0] for case in TABLE])
def test_next_action(row: Stored, seen: Seen, chain: ChainView, action: Action, state: State | None) -> None:
    decision = next_action(row, seen, chain, POLICY)
    assert (decision.action, decision.state) == (action, state)
    assert state is None or state in MOVES[State(row.state)]


def test_reasons_name_what_happened() -> None:
    assert next_action(included(), Seen(), view(), POLICY).reason == "receipt gone (was block 95)"
    moved = next_action(included(), Seen(receipt(1, OTHER)), view(), POLICY)
    assert moved.reason == "block hash changed (was block 95)"
    reverted = next_action(Stored(State.SUBMITTED), Seen(receipt(0)), view(confirmed=6), POLICY)
    assert reverted.reason == f"transaction {TX.hex()} reverted"


@pytest.mark.parametrize("state", sorted(PENDING))
def test_a_transaction_the_node_lost_is_broadcast_again_first(state: State) -> None:
    for sent_block, confirmed, action in ((0, 3, Action.HOLD), (98, 5, Action.WAIT), (97, 5, Action.REPLACE)):
        row = Stored(state, sent_block=sent_block)
        assert next_action(row, Seen(on_node=False), view(confirmed=confirmed), POLICY) == Decision(
            action, State.REPLACED if action is Action.REPLACE else None, resend=True)
        assert not next_action(row, Seen(), view(confirmed=confirmed), POLICY).resend


# -- after a look at the BatchSettled event ---------------------------------------------------------

def test_a_check_that_finds_the_event_is_an_inclusion_whichever_transaction_settled_it() -> None:
    for fallback in (State.FAILED, State.REORGED):
        check = Decision(Action.CHECK_SETTLED, fallback, "why")
        assert after_check(Stored(State.SUBMITTED), check, settled=True) == Decision(
            Action.MARK_INCLUDED, State.INCLUDED, "already settled on chain, checked: why")


def test_a_revert_not_settled_on_chain_fails_the_batch() -> None:
    check = next_action(Stored(State.SUBMITTED), Seen(receipt(0)), view(confirmed=6), POLICY)
    assert after_check(Stored(State.SUBMITTED), check, settled=False) == Decision(
        Action.FAIL, State.FAILED, f"transaction {TX.hex()} reverted, but no BatchSettled event with this batch"
                                   " hash on chain")


def test_a_consumed_nonce_not_settled_on_chain_is_a_reorg() -> None:
    row = Stored(State.REPLACED, nonce=5)
    check = next_action(row, Seen(on_node=False), view(confirmed=6), POLICY)
    assert after_check(row, check, settled=False) == Decision(
        Action.MARK_REORGED, State.REORGED, "nonce 5 consumed without a receipt of ours")


# -- the contract refused a send --------------------------------------------------------------------

@pytest.mark.parametrize(("error", "args", "action", "state"), [
    ("BatchAlreadySettled", (HASH, 1001, 2000), Action.CHECK_SETTLED, State.FAILED),
    ("SequenceGap", (HASH, 1000), Action.WAIT, None),  # an earlier batch is not on chain (yet)
    ("SequenceGap", (HASH, 1001), Action.FAIL, State.FAILED),
    ("InsufficientBalance", ("0xabc", 7), Action.FAIL, State.FAILED),
    ("revert", ("execution reverted",), Action.FAIL, State.FAILED),
])
def test_after_refusal(error: str, args: tuple[object, ...], action: Action, state: State | None) -> None:
    decision = after_refusal(Stored(State.BUILT), error, args)
    assert (decision.action, decision.state) == (action, state)
    if action is Action.FAIL:
        assert decision.reason == f"contract refused the batch: {error}{args}"


# -- states, moves, fees ----------------------------------------------------------------------------

def test_the_states_are_the_schema_symbols_stored_as_their_text() -> None:
    schema = json.loads((PROJECT_ROOT / "schemas" / "xchg.v1.SettlementState.avsc").read_text())
    assert [s.value for s in State] == schema["symbols"]
    assert all(s.value == s.name == str(s) for s in State)
    assert set(MOVES) == set(State)


def test_only_the_operator_leaves_failed_and_nothing_leaves_finalized() -> None:
    assert MOVES[State.FAILED] == {State.BUILT}
    assert MOVES[State.FINALIZED] == frozenset()
    assert [s for s, targets in MOVES.items() if State.BUILT in targets] == [State.FAILED]
    assert State.ALERT not in MOVES[State.ALERT]


def test_a_replacement_bumps_both_fees_or_takes_the_fresh_ones_and_keeps_the_tip_under_the_max() -> None:
    assert bumped((8_000, 1_000), (1, 1)) == (bump(8_000), bump(1_000))
    assert bumped((8_000, 1_000), (20_000, 3_000)) == (20_000, 3_000)
    assert bumped((8_000, 7_900), (1, 9_500)) == (9_000, 9_000)
