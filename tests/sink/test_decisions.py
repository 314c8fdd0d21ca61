"""The sink's pure decisions, without a database or a broker: does this database hold this stream,
is this record a byte-identical duplicate or a conflict, what a candle update and a book delta do,
when the database circuit closes, what a lock refusal says, what a rebuild verification finds;
and the consumer's fatal errors reaching the operator as one line."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import KafkaError
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from connectors.timescale import binding
from connectors.timescale.binding import TopicIdentity, decide
from connectors.timescale.circuit import CLOSED, HALF_OPEN, OPEN, Circuit, Transition
from connectors.timescale.lease import DATABASE_KEY, Holder, name_key, own_sessions, refusal
from connectors.timescale.rebuild import RebuildReport, compare
from connectors.timescale.records import (
    Book,
    Candidate,
    Stored,
    apply_book,
    candle_conflict,
    candle_fold,
    classify,
    comparable,
    digest,
    replay_books,
)
from streams.runtime.clients import ClientFatal

# -- does this database hold this stream? ---------------------------------------------------------------

LOGICAL = ("trades", "orders.events", "md.candles", "md.book")


def identities(prefix: str, cluster: str = "C1", ids: dict[str, str] | None = None) -> dict[str, TopicIdentity]:
    return {t: TopicIdentity(t, prefix + t, prefix, (ids or {}).get(t, f"id-{prefix}{t}"), cluster) for t in LOGICAL}


def test_an_empty_unbound_database_is_bound_and_a_bound_one_written() -> None:
    assert decide({}, identities("a."), holds_state=False).action == "bind"
    assert decide(identities("a."), identities("a."), holds_state=True).action == "write"
    assert decide(identities("a."), identities("a."), holds_state=False).action == "write"


def test_rows_without_a_binding_are_refused() -> None:
    verdict = decide({}, identities("a."), holds_state=True)
    assert verdict.action == "refuse"
    assert "xchg db rebuild" in verdict.reason and "\n" not in verdict.reason


def test_another_namespace_is_refused_naming_both() -> None:
    verdict = decide(identities("a-"), identities("b-"), holds_state=True)
    assert verdict.action == "refuse"
    assert "'a-'" in verdict.reason and "'b-'" in verdict.reason and "xchg db rebuild" in verdict.reason
    assert "EXCHANGE_DATABASE_URL" in verdict.reason and "\n" not in verdict.reason


def test_a_recreated_topic_is_refused_naming_it() -> None:
    recreated = identities("a.", ids={"trades": "new-id"})
    verdict = decide(identities("a."), recreated, holds_state=True)
    assert verdict.action == "refuse"
    assert "recreated" in verdict.reason and "a.trades" in verdict.reason and "new-id" in verdict.reason
    assert "a.md.book" not in verdict.reason  # only the topic that changed


def test_another_kafka_cluster_is_refused() -> None:
    verdict = decide(identities("", "C1"), identities("", "C2"), holds_state=False)
    assert verdict.action == "refuse" and "C1" in verdict.reason and "C2" in verdict.reason
    assert "(no prefix)" not in verdict.reason  # the namespaces are equal: not mentioned


def test_a_binding_of_other_topics_is_refused() -> None:
    fewer = {k: v for k, v in identities("a.").items() if k != "md.book"}
    assert decide(fewer, identities("a."), holds_state=True).action == "refuse"


# -- duplicate or conflict? ---------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def trade_row(trade_id: int, price: int = 100) -> tuple[Any, ...]:
    return ("M", trade_id, T0, trade_id * 3, price, 5, "m", "a1", "t", "a2", "buy")


def candidate(trade_id: int, value: bytes, price: int = 100, expected: int | None = 9) -> Candidate:
    return Candidate(("M", trade_id), trade_row(trade_id, price), digest(value), expected=expected)


def stored(trade_id: int, value: bytes | None, price: int = 100) -> Stored:
    return Stored(comparable(trade_row(trade_id, price)), digest(value) if value is not None else None)


def test_a_byte_identical_record_is_a_duplicate() -> None:
    decided = classify([candidate(4, b"rec-4")], {("M", 4): [stored(4, b"rec-4")]})
    assert decided.conflict is None and decided.insert == []
    assert [c.key for c in decided.duplicates] == [("M", 4)]


def test_other_bytes_under_a_stored_key_are_a_conflict_even_with_equal_columns() -> None:
    # Same columns, different record (e.g. another command_id, not stored as a column).
    decided = classify([candidate(4, b"rec-4-other")], {("M", 4): [stored(4, b"rec-4")]})
    assert decided.conflict is not None and decided.conflict[0].key == ("M", 4)
    assert decided.duplicates == [] and decided.insert == []


def test_a_row_without_digest_is_compared_by_its_columns() -> None:
    same = classify([candidate(4, b"x")], {("M", 4): [stored(4, None)]})
    assert same.conflict is None and len(same.duplicates) == 1
    other = classify([candidate(4, b"x", price=101)], {("M", 4): [stored(4, None)]})
    assert other.conflict is not None


def test_a_record_with_no_stored_row_is_inserted_and_later_ones_compared_with_it() -> None:
    decided = classify([candidate(7, b"r7"), candidate(7, b"r7"), candidate(8, b"r8"), candidate(7, b"r7-bis")], {})
    assert [c.key for c in decided.insert] == [("M", 7), ("M", 8)]
    assert [c.key for c in decided.duplicates] == [("M", 7)]
    assert decided.conflict is not None and decided.conflict[0].digest == digest(b"r7-bis")


def test_classification_stops_at_the_first_conflict() -> None:
    decided = classify([candidate(1, b"other"), candidate(2, b"r2")], {("M", 1): [stored(1, b"r1")]})
    assert decided.conflict is not None and decided.insert == []  # nothing after it is decided


def test_which_found_records_are_input_anomalies() -> None:
    assert candidate(4, b"x").repeat  # the tracker had seen the value: a real repeat
    assert not candidate(4, b"x", expected=None).repeat  # in sequence, its batch hit a stored key
    assert not Candidate(("M", 4), trade_row(4), digest(b"x"), expected=9, expected_stored=True).repeat  # rebuild


def test_comparable_values() -> None:
    assert comparable([T0]) == (int(T0.timestamp() * 1000),)
    assert comparable([Jsonb({"b": b"\x01", "n": 1}, dumps=lambda o: '{"b": "01", "n": 1}')]) == ({"b": "01", "n": 1},)
    assert comparable([Decimal(12), Decimal("1.5")]) == (12, Decimal("1.5"))
    assert digest(b"a") != digest(b"b") and len(digest(b"a")) == 16


# -- candles -------------------------------------------------------------------------------------------


def candle(last: int, final: bool, high: int = 10) -> tuple[Any, ...]:
    return ("M", "1m", T0, 5, high, 1, 7, 100, Decimal(700), last, 1, last, final)


def test_a_candle_moves_only_forward_and_final_sticks() -> None:
    assert candle_fold(None, candle(3, False)) == candle(3, False)
    assert candle_fold(candle(3, False), candle(5, False)) == candle(5, False)
    assert candle_fold(candle(5, False), candle(3, False)) == candle(5, False)  # an older update
    assert candle_fold(candle(5, False), candle(5, True)) == candle(5, True)
    assert candle_fold(candle(5, True), candle(5, False)) == candle(5, True)
    assert candle_fold(candle(5, True), candle(6, False))[-1] is True


def test_a_candle_of_the_same_version_with_other_values_is_a_conflict() -> None:
    assert candle_conflict(candle(5, False), candle(5, False, high=11))
    assert not candle_conflict(candle(5, False), candle(5, False))
    assert not candle_conflict(candle(5, False), candle(6, False, high=11))
    assert not candle_conflict(candle(5, False), candle(5, True, high=11))


# -- L2 book -------------------------------------------------------------------------------------------


def delta(book_seq: int, prev: int, ts: int, changes: list[tuple[str, int, int]], snapshot: bool = False,
          market: str = "M") -> dict[str, Any]:
    return {"market": market, "book_seq": book_seq, "prev_book_seq": prev, "snapshot": snapshot, "ts": ts,
            "changes": [{"side": s, "price": p, "qty": q} for s, p, q in changes]}


def test_a_book_replayed_from_its_first_delta_takes_a_snapshot_per_bucket() -> None:
    book = Book()
    first = apply_book(book, delta(2, 0, 1_000, [("buy", 99, 5), ("sell", 101, 3)], snapshot=True), 60_000)
    assert first.snapshot == ("M", 1_000, 2, [[99, 5]], [[101, 3]])
    same_bucket = apply_book(book, delta(4, 2, 30_000, [("buy", 100, 1)]), 60_000)
    assert same_bucket.snapshot is None and book.bids == {99: 5, 100: 1}
    assert apply_book(book, delta(4, 2, 31_000, [("buy", 100, 9)]), 60_000).applied is False  # replayed
    nxt = apply_book(book, delta(6, 4, 61_000, [("buy", 99, 0)]), 60_000)
    assert nxt.snapshot == ("M", 61_000, 6, [[100, 1]], [[101, 3]])


def test_a_book_whose_start_was_cut_off_takes_no_snapshot_until_a_full_one() -> None:
    snapshots: list[Any] = []
    replay_books([delta(10, 8, 1_000, [("buy", 99, 5)]),  # retention removed deltas up to 8
                  delta(12, 10, 70_000, [("buy", 98, 1)]),
                  delta(15, 12, 140_000, [("sell", 101, 2)], snapshot=True),
                  delta(16, 15, 200_000, [("sell", 102, 2)])], 60_000, snapshots.append)
    assert [s[2] for s in snapshots] == [15, 16]
    assert snapshots[0][3:] == ([], [[101, 2]])


def test_a_split_delta_is_snapshotted_once_its_last_part_is_in() -> None:
    book = Book()
    parts = [dict(delta(5, 0, 1_000, [("buy", 99 - i, 1)], snapshot=True), part=i, parts=3) for i in range(3)]
    steps = [apply_book(book, p, 60_000) for p in parts]
    assert [s.snapshot is not None for s in steps] == [False, False, True]
    assert steps[2].snapshot == ("M", 1_000, 5, [[99, 1], [98, 1], [97, 1]], [])
    assert all(s.brk is None for s in steps) and book.pending is None
    assert apply_book(book, parts[1], 60_000).applied is False  # a replayed part


def test_a_split_delta_resumes_from_a_stored_book_between_its_parts() -> None:
    book = Book()
    apply_book(book, delta(2, 0, 0, [("buy", 90, 1)], snapshot=True), 60_000)
    first = dict(delta(4, 2, 61_000, [("buy", 91, 1)]), part=0, parts=2)
    assert apply_book(book, first, 60_000).snapshot is None and book.pending == 1
    stored = Book(book.seq, book.bucket, dict(book.bids), dict(book.asks), synced=True, pending=book.pending)
    step = apply_book(stored, dict(delta(4, 2, 61_000, [("sell", 95, 2)]), part=1, parts=2), 60_000)
    assert step.brk is None and step.snapshot == ("M", 61_000, 4, [[91, 1], [90, 1]], [[95, 2]])


def test_a_lost_part_is_reported() -> None:
    book = Book()
    apply_book(book, delta(2, 0, 0, [], snapshot=True), 60_000)
    apply_book(book, dict(delta(4, 2, 10, []), part=0, parts=3), 60_000)
    assert apply_book(book, dict(delta(4, 2, 10, []), part=2, parts=3), 60_000).brk == (4, 2)
    book = Book()
    apply_book(book, delta(2, 0, 0, [], snapshot=True), 60_000)
    apply_book(book, dict(delta(4, 2, 10, []), part=0, parts=2), 60_000)
    assert apply_book(book, delta(6, 4, 20, []), 60_000).brk == (4, 4)  # a new delta before the last part


def test_a_chain_break_is_reported() -> None:
    book = Book()
    apply_book(book, delta(2, 0, 0, [], snapshot=True), 60_000)
    assert apply_book(book, delta(9, 5, 10, []), 60_000).brk == (2, 5)


# -- the database circuit -------------------------------------------------------------------------------


def test_the_circuit_closes_only_after_a_round_trip() -> None:
    circuit = Circuit()
    assert circuit.success(round_trip=False) is None and circuit.state == CLOSED
    assert circuit.failure() == Transition(CLOSED, OPEN)
    assert circuit.failure() is None  # still open
    # An operation that did not reach the database (a cached connection) proves nothing.
    assert circuit.success(round_trip=False) is None and circuit.state == OPEN
    assert circuit.retrying() == Transition(OPEN, HALF_OPEN)
    assert circuit.retrying() is None
    assert circuit.failure() == Transition(HALF_OPEN, OPEN)
    assert circuit.success(round_trip=True) == Transition(OPEN, CLOSED)
    assert circuit.retrying() is None and circuit.state == CLOSED


# -- locks --------------------------------------------------------------------------------------------


def holder(key: int, exclusive: bool, app: str = "xchg-sink 7@h abc", consumer: str | None = "s1") -> Holder:
    return Holder(41, app, "127.0.0.1", datetime(2026, 1, 1, tzinfo=UTC), key, exclusive, consumer)


def test_lock_keys_are_stable_and_never_the_database_key() -> None:
    assert name_key("xchg-sink") == name_key("xchg-sink")
    assert name_key("a") != name_key("b")
    assert all(0 < name_key(n) <= 0x7FFFFFFF and name_key(n) != DATABASE_KEY for n in ("", "x", "t-a.xchg-sink"))


def test_refusals_name_the_holder_and_what_to_do() -> None:
    by_rebuild = refusal("s1", "sink", [holder(DATABASE_KEY, True, "xchg-rebuild 9@h def", None)])
    assert "rebuild" in by_rebuild and "pid 41" in by_rebuild
    same_name = refusal("s1", "sink", [holder(DATABASE_KEY, False), holder(name_key("s1"), True)])
    assert "already running" in same_name and "EXCHANGE_SINK_NAME" in same_name
    for_rebuild = refusal("s1", "rebuild", [holder(DATABASE_KEY, False), holder(name_key("s1"), True)])
    assert "running" in for_rebuild and "sink s1" in for_rebuild and "xchg db rebuild" in for_rebuild
    assert all("\n" not in m for m in (by_rebuild, same_name, for_rebuild))


def test_only_this_process_sessions_are_taken_over() -> None:
    holders = [holder(1, True, "mine"), holder(1, True, "theirs")]
    assert own_sessions(holders, "mine") == [41]
    assert own_sessions(holders, "nobody") == []


# -- rebuild verification ----------------------------------------------------------------------------


def test_verification_finds_missing_extra_different_and_second_rows() -> None:
    expected = {("M", i): ((("M", i, i * 1000)), b"d%d" % i) for i in range(1, 6)}
    rows = [(("M", 1), ("M", 1, 1000), b"d1"),
            (("M", 2), ("M", 2, 2000), b"other"),  # the record digest differs
            (("M", 3), ("M", 3, 3001), b"d3"),  # a column differs
            (("M", 3), ("M", 3, 3000), b"d3"),  # a second row of the key
            (("M", 9), ("M", 9, 9000), b"d9")]  # no record implies it
    check = compare("trades", expected, rows, before=lambda values: values[2] < 4500)
    assert (check.missing, check.different, check.unexpected, check.unchecked) == (2, 2, 2, 0)
    assert check.missing_before == 1  # trade 4 is from before --since, trade 5 after
    assert not check.ok and "from before --since" in check.problems()


def test_rows_older_than_the_topic_are_reported_not_compared() -> None:
    expected = {("M", 5): (("M", 5), None)}
    check = compare("trades", expected, [(("M", 1), ("M", 1), None), (("M", 5), ("M", 5), None)],
                    vouched=lambda key: key[1] >= 5)
    assert check.ok and check.unchecked == 1 and check.table == 1


def test_a_report_without_checks_is_not_verified() -> None:
    report = RebuildReport()
    assert not report.ok
    report.checks["trades"] = compare("trades", {}, [])
    assert report.ok and report.lines()[0] == "trades: topic 0, table 0; order events: topic 0, table 0"


# -- fatal consumer errors ---------------------------------------------------------------------------


class _Message:
    def __init__(self, error: KafkaError) -> None:
        self._error = error

    def error(self) -> KafkaError:
        return self._error


class _Consumer:
    def __init__(self, errors: list[KafkaError]) -> None:
        self.errors = errors

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        out, self.errors = [_Message(e) for e in self.errors], []
        return out


def _sink(errors: list[KafkaError]) -> Any:
    from connectors.timescale.sink import SinkConfig, TimescaleSink

    sink = TimescaleSink(SinkConfig(bootstrap="127.0.0.1:1", dsn="postgresql://nobody@127.0.0.1:1/none", linger_ms=1))
    sink.consumer = _Consumer(errors)  # type: ignore[assignment]
    return sink


def test_a_fatal_consumer_error_stops_the_sink() -> None:
    sink = _sink([KafkaError(KafkaError._FATAL, "fenced by a newer instance")])
    try:
        with pytest.raises(ClientFatal):
            sink.step()
    finally:
        sink.writer.shutdown()


def test_a_transient_consumer_error_is_only_logged() -> None:
    sink = _sink([KafkaError(KafkaError._TRANSPORT, "broker went away")])
    try:
        assert sink.step() == 0
    finally:
        sink.writer.shutdown()


@pytest.mark.parametrize("error", [ClientFatal("_FATAL: fenced"), binding.SinkError("sink s1 is already running")])
def test_the_sink_command_turns_fatal_errors_into_one_line(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    from connectors.timescale.sink import TimescaleSink
    from streams.cli import app

    def run(self: Any, on_batch: Any = None) -> Any:
        raise error

    monkeypatch.setattr(TimescaleSink, "run", run)
    monkeypatch.setattr("streams.runtime.collector.tune_for_streaming", lambda: None)
    monkeypatch.setenv("EXCHANGE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("EXCHANGE_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    result = CliRunner().invoke(app, ["sink", "timescale", "--until-caught-up"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(error) in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("error", [ClientFatal("_FATAL: fenced"), binding.SinkError("a sink is running")])
def test_the_rebuild_command_turns_fatal_errors_into_one_line(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    from streams.cli import app

    def run_cli(*args: Any) -> None:
        raise error

    monkeypatch.setattr("connectors.timescale.rebuild.run_cli", run_cli)
    result = CliRunner().invoke(app, ["db", "rebuild", "--yes"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(error) in lines[0], result.output


def test_the_rebuild_turns_its_consumers_fatal_errors_into_client_fatal() -> None:
    from confluent_kafka import KafkaException

    from connectors.timescale.errors import RebuildError
    from connectors.timescale.rebuild import _kafka

    def failing(code: int) -> Any:
        raise KafkaException(KafkaError(code, "boom"))

    with pytest.raises(ClientFatal):
        _kafka("reading t[0]", failing, KafkaError._FATAL)
    with pytest.raises(RebuildError) as raised:
        _kafka("reading t[0]", failing, KafkaError._TRANSPORT)
    assert str(raised.value).startswith("reading t[0]: ") and "\n" not in str(raised.value)
