"""The submitter's pure decisions (``connectors/settlement/decide.py``), without services."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from confluent_kafka import KafkaError

from connectors.settlement.batch_service import usable
from connectors.settlement.decide import (
    ChainView,
    Filler,
    SendPlan,
    State,
    Watch,
    bump,
    filler_fees,
    plan_send,
    sendable,
    watch_pending,
)
from streams.runtime.clients import ClientFatal


@dataclass
class R:
    market: str
    batch_seq: int
    state: str
    nonce: int | None = None


def view(confirmed: int, tip: int = 100, pool_next: int | None = None) -> ChainView:
    return ChainView(tip=tip, confirmed=confirmed, pool_next=confirmed if pool_next is None else pool_next)


# -- pending transactions -----------------------------------------------------------------------

def test_a_receipt_decides_first() -> None:
    assert watch_pending(1, 5, 90, view(3), 3) is Watch.INCLUDED
    assert watch_pending(0, 5, 90, view(9), 3) is Watch.REVERTED


def test_a_nonce_mined_without_our_receipt_is_consumed() -> None:
    assert watch_pending(None, 5, 99, view(6), 3) is Watch.CONSUMED


@pytest.mark.parametrize("sent_block", [None, 0, 50, 99, 100])
def test_a_transaction_above_the_chain_count_waits_on_the_gap_and_is_never_bumped(sent_block: int | None) -> None:
    for confirmed in range(5):
        assert watch_pending(None, 5, sent_block, view(confirmed, tip=100), 3) is Watch.HOLD


def test_the_minable_transaction_is_replaced_after_replace_after_blocks_only() -> None:
    assert watch_pending(None, 5, 98, view(5, tip=100), 3) is Watch.WAIT
    assert watch_pending(None, 5, 97, view(5, tip=100), 3) is Watch.REPLACE
    assert watch_pending(None, 5, None, view(5, tip=100), 3) is Watch.WAIT


def test_a_tip_below_the_send_block_counts_as_no_block_waited() -> None:
    assert watch_pending(None, 5, 110, view(5, tip=100), 3) is Watch.WAIT


# -- what to send ---------------------------------------------------------------------------------

def test_nothing_is_sent_while_the_minable_transaction_is_in_flight() -> None:
    rows = [R("A", 1, State.SUBMITTED, 4), R("B", 1, State.BUILT)]
    assert plan_send(rows, set(), view(4)) is None
    assert plan_send(rows, set(), view(5)) is None  # just mined: the watch records it first


def test_no_gap_sends_the_next_built_batch_at_the_nodes_pending_count() -> None:
    rows = [R("A", 1, State.INCLUDED, 0), R("A", 2, State.BUILT), R("B", 1, State.BUILT)]
    assert plan_send(rows, set(), view(1, pool_next=3)) == SendPlan(3, (("A", 2), ("B", 1)), fill_gap=False)
    assert plan_send([R("A", 1, State.FINALIZED, 0)], set(), view(1)) is None


def test_a_gap_is_filled_at_the_chain_count_with_reorged_batches_first_in_nonce_order() -> None:
    # A #3 (nonce 7) is pending above the gap left by a reorg of nonces 4..6; anvil's pending count
    # still counts the stranded transaction, so it must not be used for the nonce.
    rows = [R("A", 1, State.INCLUDED, 3), R("A", 2, State.REORGED, 5), R("A", 3, State.SUBMITTED, 7),
            R("B", 1, State.REORGED, 4), R("B", 2, State.REORGED, 6), R("C", 1, State.BUILT)]
    plan = plan_send(rows, set(), view(4, pool_next=8))
    assert plan is not None and plan.nonce == 4 and plan.fill_gap
    # B #2 waits for B #1 (not on chain yet); BUILT comes after every reorged batch.
    assert plan.candidates == (("B", 1), ("A", 2), ("C", 1))


def test_several_stranded_transactions_each_wait_and_the_lowest_free_nonce_is_next() -> None:
    rows = [R("A", 1, State.SUBMITTED, 2), R("A", 2, State.REORGED, 3), R("B", 1, State.REPLACED, 5),
            R("B", 2, State.ALERT, 6), R("C", 1, State.REORGED, 1), R("C", 2, State.REORGED, 4)]
    for row in rows:
        if row.state in (State.SUBMITTED, State.REPLACED, State.ALERT):
            assert row.nonce is not None
            assert watch_pending(None, row.nonce, 0, view(1), 3) is Watch.HOLD
    plan = plan_send(rows, set(), view(1, pool_next=7))
    assert plan is not None and (plan.nonce, plan.candidates[0]) == (1, ("C", 1))


def test_reorged_batches_without_a_gap_go_first_at_the_chain_count() -> None:
    rows = [R("A", 1, State.REORGED, 2), R("A", 2, State.REORGED, 3), R("B", 1, State.BUILT)]
    plan = plan_send(rows, set(), view(2, pool_next=2))
    assert plan == SendPlan(2, (("A", 1), ("B", 1)), fill_gap=False)


def test_a_gap_no_batch_can_fill_gets_a_filler() -> None:
    rows = [R("A", 1, State.INCLUDED, 0), R("A", 2, State.SUBMITTED, 2)]  # nonce 1 was not a batch
    assert plan_send(rows, set(), view(1, pool_next=3)) == SendPlan(1, (), fill_gap=True)


def test_halted_markets_and_waiting_successors_are_not_sendable() -> None:
    rows = [R("A", 1, State.REORGED, 1), R("A", 2, State.BUILT), R("B", 1, State.BUILT), R("C", 1, State.INCLUDED, 0),
            R("C", 2, State.BUILT)]
    assert sendable(rows, {"B"}) == [("A", 1), ("C", 2)]


# -- gap fillers ----------------------------------------------------------------------------------

def test_a_filler_takes_the_fresh_fees_capped() -> None:
    assert filler_fees(None, 4, 100, (3_000, 1_000), 3, cap=10_000) == (3_000, 1_000)
    assert filler_fees(None, 4, 100, (30_000, 1_000), 3, cap=10_000) == (10_000, 1_000)
    previous = Filler(3, 99, 3_000, 1_000)
    assert filler_fees(previous, 4, 100, (3_000, 1_000), 3, cap=10_000) == (3_000, 1_000)  # a new nonce


def test_a_filler_is_resent_only_after_replace_after_blocks_with_bumped_fees() -> None:
    previous = Filler(4, 100, 3_000, 1_000)
    assert filler_fees(previous, 4, 102, (3_000, 1_000), 3, cap=10_000) is None
    assert filler_fees(previous, 4, 103, (3_000, 1_000), 3, cap=10_000) == (bump(3_000), bump(1_000))
    assert filler_fees(previous, 4, 103, (9_000, 2_000), 3, cap=10_000) == (9_000, 2_000)
    assert filler_fees(Filler(4, 100, 9_500, 1_000), 4, 103, (1, 1), 3, cap=10_000) is None  # over the cap


def test_bump_is_at_least_an_eighth_rounded_up() -> None:
    assert [bump(v) for v in (0, 1, 8, 9, 10**9)] == [0, 2, 9, 11, 1_125_000_000]


# -- consumer errors ------------------------------------------------------------------------------

class Message:
    def __init__(self, error: KafkaError | None) -> None:
        self._error = error

    def error(self) -> KafkaError | None:
        return self._error


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))


@pytest.mark.parametrize("code", [KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID,
                                  KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED])
def test_a_fatal_consumer_error_raises_client_fatal(code: int) -> None:
    with pytest.raises(ClientFatal):
        usable(Message(KafkaError(code, "the broker says no", fatal=False)), Log())  # type: ignore[arg-type]


def test_a_transient_consumer_error_is_logged_and_skipped() -> None:
    log = Log()
    assert not usable(Message(KafkaError(KafkaError._TRANSPORT, "broker down")), log)  # type: ignore[arg-type]
    assert usable(Message(None), log)  # type: ignore[arg-type]
    assert [event for event, _ in log.lines] == ["consumer error skipped"]
