"""Pure decisions of the sink about records and rows (no I/O; unit-tested without a database).

- A record whose key is already stored is a *duplicate* only when it is byte for byte the record
  that row was written from (``same_record``: the BLAKE2b digest of the Kafka value is stored
  with the row; for a row without one, all its columns are compared). A record with the key of a
  stored row and other bytes is a *conflict*: the sink stops on it, it never skips it.
  ``classify`` sorts a batch's candidates in order: insert (no stored row: e.g. a row lost to an
  earlier bug, or before a rebuild's time), duplicate, or the first conflict.
- A candle update replaces the stored state of its window when it is newer (``candle_fold``:
  a higher ``last_trade_id``, or the same one becoming final; ``final`` sticks); an update of the
  same version with other values is a conflict (``candle_conflict``).
- L2 snapshots (``apply_book``): the book of a market is replayed from ``md.book``; a snapshot
  row is taken whenever a complete delta's event time enters a new interval bucket, and only from
  a book known to be complete (*synced*: after a full-book record, or from the market's first
  delta), never from one whose start was cut off by retention, nor between the parts of a split
  delta.
- A conflict stops the sink with one line naming the record's place (``journal_conflict``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from confluent_kafka import Message
from psycopg.types.json import Jsonb

from connectors.timescale.errors import RecordConflict
from connectors.timescale.tables import CANDLES_TABLE, Journal

DIGEST_SIZE = 16
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
BOOK_DEPTH = 50


def digest(value: bytes | None) -> bytes:
    """The stored fingerprint of a Kafka record value (128 bits: collisions are not a concern)."""
    return hashlib.blake2b(value or b"", digest_size=DIGEST_SIZE).digest()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MS
    if isinstance(value, Jsonb):
        return json.loads((value.dumps or json.dumps)(value.obj))
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else value
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def comparable(row: Iterable[Any]) -> tuple[Any, ...]:
    """A table row (as the sink writes it, or as psycopg reads it back) in a form that is equal
    exactly when the values are: times as epoch milliseconds, JSON as parsed values, integral
    decimals as ints."""
    return tuple(_plain(v) for v in row)


@dataclass(frozen=True)
class Stored:
    """A stored row: its comparable values (without the digest) and its digest (None: unknown)."""

    values: tuple[Any, ...]
    digest: bytes | None


@dataclass
class Candidate:
    """A record whose key may already be stored. ``row`` is the table row without the digest;
    ``expected_stored`` marks a record a rebuild re-reads on purpose (not an input anomaly when
    found stored); ``expected`` is the sequence value the tracker expected when it came, None for
    a record the tracker found in sequence (compared because its batch hit a stored key)."""

    key: tuple[str, int]
    row: tuple[Any, ...]
    digest: bytes
    source: Any = None
    expected_stored: bool = False
    expected: int | None = None

    @property
    def repeat(self) -> bool:
        """Whether finding this record stored makes it an input anomaly (a duplicate)."""
        return self.expected is not None and not self.expected_stored


@dataclass
class Classified:
    insert: list[Candidate] = field(default_factory=list)
    duplicates: list[Candidate] = field(default_factory=list)
    conflict: tuple[Candidate, Stored] | None = None


def same_record(stored: Stored, candidate_digest: bytes, candidate_values: tuple[Any, ...]) -> bool:
    if stored.digest is not None:
        return stored.digest == candidate_digest
    return stored.values == candidate_values


def classify(candidates: Sequence[Candidate], stored: Mapping[tuple[str, int], Sequence[Stored]]) -> Classified:
    """In order: a candidate with no stored row (nor an earlier candidate) of its key is inserted;
    one identical to every stored row of its key is a duplicate; the first other one is the
    conflict (classification stops there: nothing of the batch may be written)."""
    out = Classified()
    known: dict[tuple[str, int], list[Stored]] = {k: list(v) for k, v in stored.items()}
    for c in candidates:
        values = comparable(c.row)
        rows = known.get(c.key)
        if not rows:
            out.insert.append(c)
            known[c.key] = [Stored(values, c.digest)]
            continue
        for r in rows:
            if not same_record(r, c.digest, values):
                out.conflict = (c, r)
                return out
        out.duplicates.append(c)
    return out


# -- candles ---------------------------------------------------------------------------------------
# Rows of ``CANDLES_TABLE``; ``final`` is its last column (``candle_fold`` rebuilds the row up to it).
LAST_TRADE_ID, FINAL = CANDLES_TABLE.position("last_trade_id"), CANDLES_TABLE.position("final")


def candle_newer(stored: Sequence[Any], update: Sequence[Any]) -> bool:
    """Whether ``update`` moves the window's stored state on (the rule of the SQL upsert)."""
    return bool(stored[LAST_TRADE_ID] < update[LAST_TRADE_ID]
                or (stored[LAST_TRADE_ID] == update[LAST_TRADE_ID] and update[FINAL] and not stored[FINAL]))


def candle_conflict(stored: Sequence[Any], update: Sequence[Any]) -> bool:
    """The same version of a window (last trade, final) with other values: two histories."""
    return (stored[LAST_TRADE_ID] == update[LAST_TRADE_ID] and bool(stored[FINAL]) == bool(update[FINAL])
            and comparable(stored) != comparable(update))


def candle_fold(stored: tuple[Any, ...] | None, update: tuple[Any, ...]) -> tuple[Any, ...]:
    """The window's state after ``update`` (``final`` sticks once set)."""
    if stored is None:
        return update
    if candle_newer(stored, update):
        return (*update[:FINAL], bool(stored[FINAL]) or bool(update[FINAL]))
    return stored


# -- L2 book ---------------------------------------------------------------------------------------


class Book:
    """One market's aggregated book as replayed from ``md.book``. ``pending`` is the next part
    expected of a delta split into parts (None: the book is consistent at ``seq``)."""

    __slots__ = ("asks", "bids", "bucket", "pending", "seq", "synced")

    def __init__(self, seq: int = 0, bucket: int = -1, bids: dict[int, int] | None = None,
                 asks: dict[int, int] | None = None, synced: bool = False, pending: int | None = None) -> None:
        self.seq, self.bucket, self.synced, self.pending = seq, bucket, synced, pending
        self.bids: dict[int, int] = bids or {}
        self.asks: dict[int, int] = asks or {}

    def levels(self) -> tuple[list[list[int]], list[list[int]]]:
        bids = sorted(self.bids.items(), key=lambda kv: -kv[0])[:BOOK_DEPTH]
        asks = sorted(self.asks.items())[:BOOK_DEPTH]
        return [list(x) for x in bids], [list(x) for x in asks]

    def state(self) -> tuple[str, str]:
        return json.dumps(sorted(self.bids.items())), json.dumps(sorted(self.asks.items()))

    def apply(self, changes: Iterable[Mapping[str, Any]]) -> None:
        for change in changes:
            side = self.bids if change["side"] == "buy" else self.asks
            if change["qty"]:
                side[change["price"]] = change["qty"]
            else:
                side.pop(change["price"], None)


@dataclass(frozen=True)
class BookStep:
    """What one ``md.book`` record did: a snapshot row (market, ts ms, book_seq, bids, asks) to
    store, a chain break (expected prev_book_seq, got), whether it was applied."""

    snapshot: tuple[str, int, int, list[list[int]], list[list[int]]] | None = None
    brk: tuple[int, int] | None = None
    applied: bool = True


def apply_book(book: Book, delta: Mapping[str, Any], interval_ms: int) -> BookStep:
    """Apply one ``md.book`` record to ``book`` (mutated) and say what to store.

    A delta split into parts (``part`` 0 .. ``parts``-1, consecutive records sharing ``book_seq``)
    is applied part by part, and the book is snapshotted only once its last part is in. A lost
    delta or part is reported as a break and the record applied anyway (the chain's contract)."""
    part, parts = int(delta.get("part", 0)), int(delta.get("parts", 1))
    seq = delta["book_seq"]
    brk = None
    if part > 0:
        if book.pending is None and seq <= book.seq:
            return BookStep(applied=False)  # a replayed part of a delta already complete
        if book.seq and (book.pending != part or seq != book.seq):  # not at a start cut off by retention
            brk = (book.seq, delta["prev_book_seq"])
        book.apply(delta["changes"])
        book.seq = max(book.seq, seq)
        book.pending = part + 1 if part + 1 < parts else None
    else:
        if book.pending is not None:  # the previous split delta never received its last part
            brk = (book.seq, delta["prev_book_seq"])
            book.pending = None
        if delta["snapshot"]:
            book.bids, book.asks = {}, {}
            book.synced = True
        elif seq <= book.seq:
            return BookStep(brk=brk, applied=False)  # a replayed delta
        elif book.seq and delta["prev_book_seq"] != book.seq:
            brk = (book.seq, delta["prev_book_seq"])
        elif not book.seq and delta["prev_book_seq"] == 0:
            book.synced = True  # the market's very first delta: the book starts empty
        book.apply(delta["changes"])
        book.seq = seq
        book.pending = 1 if parts > 1 else None
    bucket = delta["ts"] // interval_ms
    if not book.synced or book.pending is not None or bucket <= book.bucket:
        return BookStep(brk=brk)
    book.bucket = bucket
    bids, asks = book.levels()
    return BookStep(snapshot=(delta["market"], delta["ts"], book.seq, bids, asks), brk=brk)


def replay_books(deltas: Iterable[Mapping[str, Any]], interval_ms: int,
                 on_snapshot: Callable[[tuple[str, int, int, list[list[int]], list[list[int]]]], Any]) -> dict[str, Book]:
    """Replay ``deltas`` (in partition order) from empty books; ``on_snapshot`` gets every row."""
    books: dict[str, Book] = {}
    for delta in deltas:
        step = apply_book(books.setdefault(delta["market"], Book()), delta, interval_ms)
        if step.snapshot is not None:
            on_snapshot(step.snapshot)
    return books


# -- what a conflict says --------------------------------------------------------------------------


def where(message: Message) -> str:
    """A consumed record's place in its topic, as the operator reads it: ``topic[partition]@offset``."""
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"


def journal_conflict(journal: Journal, candidate: Candidate, stored: Stored) -> RecordConflict:
    """The stop of a record with the key of a stored row but other bytes (``classify``'s conflict)."""
    market, value = candidate.key
    source = f" at {where(candidate.source)}" if candidate.source is not None else ""
    was = f"digest {stored.digest.hex()}" if stored.digest is not None else f"values {stored.values}"
    return RecordConflict(
        f"{journal.topic} record {market} {journal.key} {value}{source} has the key of a stored row with other "
        f"values (stored {was}, record digest {candidate.digest.hex()}): not a duplicate, so it is not skipped; "
        "the sink stops without writing its batch. Does the database hold another stream's rows? "
        "(`xchg db rebuild --yes` rebuilds it from the topics)")
