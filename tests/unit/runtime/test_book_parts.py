"""md.book deltas split into parts (``book_records``) and their chain check (``BookChain``):
no book size makes a record over the topic's limit, and a lost or reordered part is a break."""

from __future__ import annotations

from streams.domain.commands import Side
from streams.processors.matching import book_records
from streams.runtime.sequence import BookChain, Verdict
from streams.serde.codec import Codec
from streams.serde.topics import MD_BOOK


def levels(n: int) -> list[tuple[Side, int, int]]:
    return [(Side.BUY if i % 2 else Side.SELL, 10**12 + i, 2**62) for i in range(n)]


def test_a_small_delta_is_one_record() -> None:
    (record,) = book_records("BTC-USD", 7, 5, False, 1, 0, 3, levels(3))
    assert (record["part"], record["parts"], len(record["changes"])) == (0, 1, 3)


def test_an_empty_snapshot_is_still_published() -> None:
    (record,) = book_records("BTC-USD", 7, 0, True, 1, 0, 3, [])
    assert record["snapshot"] and record["changes"] == []


def test_a_book_of_any_size_fits_the_topic() -> None:
    codec = Codec()
    changes = levels(130_001)
    records = book_records("BTC-USD", 900_000, 0, True, 1, 2, 99, changes)
    assert [r["part"] for r in records] == list(range(7)) and {r["parts"] for r in records} == {7}
    assert sum(len(r["changes"]) for r in records) == len(changes)
    assert max(len(codec.encode(MD_BOOK, r)) for r in records) < 1_048_576
    assert {(r["book_seq"], r["prev_book_seq"], r["snapshot"], r["seq"]) for r in records} == {(900_000, 0, True, 900_000)}


def observe(chain: BookChain, record: dict[str, object]) -> Verdict:
    return chain.observe(str(record["market"]), int(record["book_seq"]), int(record["prev_book_seq"]),  # type: ignore[call-overload]
                         bool(record["snapshot"]), int(record["part"]), int(record["parts"]))  # type: ignore[call-overload]


def test_the_chain_accepts_the_parts_in_order() -> None:
    chain = BookChain()
    parts = book_records("M", 10, 0, True, 1, 0, 0, levels(5), per_record=2)
    after = book_records("M", 12, 10, False, 1, 0, 1, levels(1))
    assert [observe(chain, r) for r in [*parts, *after]] == [Verdict.OK] * 4
    assert chain.breaks == [] and chain.last["M"] == 12


def test_a_lost_part_is_a_break() -> None:
    chain = BookChain()
    parts = book_records("M", 10, 0, True, 1, 0, 0, levels(5), per_record=2)
    after = book_records("M", 12, 10, False, 1, 0, 1, levels(1))
    for record in [parts[0], parts[2], *after]:  # part 1 lost
        observe(chain, record)
    assert len(chain.breaks) == 1


def test_a_delta_before_the_last_part_is_a_break() -> None:
    chain = BookChain()
    parts = book_records("M", 10, 0, True, 1, 0, 0, levels(5), per_record=2)
    after = book_records("M", 12, 10, False, 1, 0, 1, levels(1))
    for record in [parts[0], parts[1], *after]:  # part 2 never came
        observe(chain, record)
    assert len(chain.breaks) == 1


def test_a_repeated_delta_is_a_duplicate_not_a_break() -> None:
    chain = BookChain()
    parts = book_records("M", 10, 0, False, 1, 0, 0, levels(4), per_record=2)
    verdicts = [observe(chain, r) for r in [*parts, *parts]]
    assert verdicts[:2] == [Verdict.OK, Verdict.OK] and chain.breaks == []
    assert Verdict.DUPLICATE in verdicts[2:]
