"""From consumed records to a batch to write: table rows, input anomalies, rejected records and
the offsets the batch advances (pure: no database, no broker, no clock, no metrics).

``Preparer`` holds what the sink knows of the stream between batches: a ``SequenceTracker`` per
journal (``trade_id`` for trades, ``seq`` for order events) and each market's L2 book replayed
from ``md.book`` (``records.apply_book``). ``Preparer.prepare`` turns one batch of records into a
``Batch``; the only thing it asks outside is the highest stored counter of markets it meets for
the first time (``StoredLast``), so a restart resumes the trackers from the database.

Invariants of a ``Batch``:

- ``offsets`` holds, for every (physical topic, partition) of the batch, the offset after its last
  record: every consumed record is accounted for by a row, a candidate, a candle window, a book
  change, a skipped replay or a rejection, so storing these offsets with the rows loses nothing.
- A journal record in sequence (or after a gap) is a row to write (``trades``/``events``, each
  with the digest of its record and its source in ``trade_src``/``event_src``, index for index).
  A record whose counter was already seen is a *candidate* (``trade_candidates``/
  ``event_candidates``): only the stored rows can say whether it is a duplicate, a late record or
  a conflict (``records.classify``, decided by the writer inside its transaction).
- A gap and an ``md.book`` chain break are ``anomalies`` (in the order met); a record that cannot
  be decoded, or whose values no row can hold, is ``rejected`` with a reason (for the dead-letter
  topic); nothing else is dropped.
- ``candles`` holds one row per window: the fold of the batch's updates (``records.candle_fold``);
  two updates of one version with other values stop the sink (``RecordConflict``).
- ``book_rows`` are the books as of the end of this batch, complete books only (so a stored book
  is synced), for the markets the batch changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

from confluent_kafka import Message

from connectors.timescale.errors import RecordConflict
from connectors.timescale.records import (
    DIGEST_SIZE,
    Book,
    Candidate,
    apply_book,
    candle_conflict,
    candle_fold,
    digest,
    where,
)
from connectors.timescale.tables import (
    EVENT_JOURNAL,
    TRADE_JOURNAL,
    Journal,
    candle_row,
    event_row,
    snapshot_row,
    trade_row_reader,
    utc_from_ms,
)
from streams.runtime.namespace import Namespace
from streams.runtime.sequence import SequenceTracker, Verdict
from streams.serde.codec import Codec, DecodeError
from streams.serde.topics import MD_BOOK, MD_CANDLES, ORDERS_EVENTS, TRADES

# The highest stored counter (``journal.key``) of each of ``markets`` that has rows in the journal.
StoredLast = Callable[[Journal, list[str]], Mapping[str, int]]
CandleKey = tuple[str, str, int]  # market, interval, window start (ms)


@dataclass(frozen=True)
class Rejected:
    """A record for the dead-letter topic: ``reason`` is a short kind (``undecodable:...``,
    ``invalid:...``, ``db_rejected:...``), ``detail`` the error's text."""

    message: Message
    reason: str
    detail: str


@dataclass(frozen=True)
class Anomaly:
    """An input anomaly (a ``sink_anomalies`` row without its consumer): a gap, a byte-identical
    duplicate or an ``md.book`` chain break, with the values expected and got."""

    topic: str
    market: str
    kind: str
    expected: int | None
    got: int
    partition: int
    offset: int

    def row(self, consumer: str) -> tuple[Any, ...]:
        return (consumer, self.topic, self.market, self.kind, self.expected, self.got, self.partition, self.offset)

    @property
    def stream_order(self) -> tuple[str, int, int]:
        return self.topic, self.partition, self.offset

    @classmethod
    def at(cls, message: Message, topic: str, market: str, kind: str, expected: int | None,
           got: int) -> Anomaly:
        return cls(topic, market, kind, expected, got, message.partition(), message.offset())  # type: ignore[arg-type]


@dataclass
class Batch:
    """Rows prepared from consumed records, with the offsets they advance (see the module docstring)."""

    trades: list[tuple[Any, ...]] = field(default_factory=list)  # rows + digest
    trade_src: list[Message] = field(default_factory=list)
    trade_candidates: list[Candidate] = field(default_factory=list)  # sequence values already seen
    events: list[tuple[Any, ...]] = field(default_factory=list)
    event_src: list[Message] = field(default_factory=list)
    event_candidates: list[Candidate] = field(default_factory=list)
    candles: dict[CandleKey, tuple[Any, ...]] = field(default_factory=dict)
    candle_src: dict[CandleKey, Message] = field(default_factory=dict)
    snapshots: list[tuple[Any, ...]] = field(default_factory=list)
    books: set[str] = field(default_factory=set)
    book_rows: list[tuple[Any, ...]] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # physical topic, partition → next
    records: int = 0


class Preparer:
    """The sink's knowledge of the stream between batches, and the fold of a batch into it.

    ``consumer`` is the sink's name (the first column of its ``sink_book_state`` rows);
    ``rereading_before_ms`` marks records a rebuild re-reads on purpose (event time before it):
    found stored byte for byte they are not input anomalies."""

    def __init__(self, codec: Codec, namespace: Namespace, consumer: str, book_snapshot_interval_s: int,
                 rereading_before_ms: int | None = None) -> None:
        self.codec = codec
        self.ns = namespace
        self.consumer = consumer
        self.interval_ms = book_snapshot_interval_s * 1000
        self.rereading_before_ms = rereading_before_ms
        self.rereading_before = utc_from_ms(rereading_before_ms) if rereading_before_ms is not None else None
        self.read_trade = trade_row_reader(codec)
        self.logical: dict[str, str] = {}
        self.trade_seq = SequenceTracker()
        self.event_seq = SequenceTracker()
        self.known_trade_markets: set[str] = set()
        self.known_event_markets: set[str] = set()
        self.books: dict[str, Book] = {}

    def restore(self, books: Mapping[str, Book]) -> None:
        """Start again from the database's state: its stored books; the trackers resume lazily,
        per market, from the stored counters (``StoredLast``)."""
        self.books = dict(books)
        self.trade_seq, self.event_seq = SequenceTracker(), SequenceTracker()
        self.known_trade_markets.clear()
        self.known_event_markets.clear()

    def prepare(self, messages: Sequence[Message], stored_last: StoredLast) -> Batch:
        """The batch of ``messages`` (in consumption order). Raises ``RecordConflict`` for two
        histories of one candle; any error of ``stored_last`` leaves the trackers as they were
        for the markets it did not answer, so a failed call may be retried with the same records."""
        batch = Batch()
        decoded: list[tuple[str, Message, Any]] = []  # a dict, or a finished row for TRADES
        # One pass: offsets, decoding, the markets whose stored sequence must be known first.
        offsets, logical_of, decode, rejected = batch.offsets, self.logical, self.codec.decode, batch.rejected
        read_trade = self.read_trade
        trade_markets: set[str] = set()
        event_markets: set[str] = set()
        for message in messages:
            topic: str = message.topic()  # type: ignore[assignment]  # never None for a consumed record
            offsets[(topic, message.partition())] = message.offset() + 1  # type: ignore[index,operator]
            logical = logical_of.get(topic)
            if logical is None:
                logical = logical_of[topic] = self.ns.logical(topic)
            try:
                if logical == TRADES:
                    row = read_trade(message.value())  # the table row itself: no dict per trade
                    decoded.append((TRADES, message, row))
                    trade_markets.add(row[0])
                    continue
                value = decode(logical, message.value())
            except DecodeError as error:
                rejected.append(Rejected(message, f"undecodable:{error.reason}", str(error)))
                continue
            except (ValueError, OverflowError) as error:  # a trade time no timestamp holds
                rejected.append(Rejected(message, f"invalid:{type(error).__name__}", str(error)))
                continue
            decoded.append((logical, message, value))
            if logical == ORDERS_EVENTS:
                event_markets.add(value["market"])
        batch.records = len(messages)
        self._resume(stored_last, TRADE_JOURNAL, trade_markets, self.trade_seq, self.known_trade_markets)
        self._resume(stored_last, EVENT_JOURNAL, event_markets, self.event_seq, self.known_event_markets)
        # Fast path for the common case, a trade that is the next of its market (the same
        # classification SequenceTracker.observe makes); everything else goes through _sequence.
        tracker, trades, trade_src = self.trade_seq, batch.trades, batch.trade_src
        last = tracker.last
        rereading_before = self.rereading_before
        for logical, message, v in decoded:
            try:
                if logical == TRADES:
                    market, trade_id = v[0], v[1]
                    record_digest = blake2b(message.value() or b"", digest_size=DIGEST_SIZE).digest()
                    if last.get(market, tracker.start) == trade_id - 1:
                        last[market] = trade_id
                        tracker.seen += 1
                        trades.append((*v, record_digest))
                        trade_src.append(message)
                    else:
                        self._sequence(batch, TRADES, market, trade_id, message, v, record_digest,
                                       rereading_before is not None and v[2] < rereading_before)
                    continue
                self._prepare_one(batch, logical, message, v)
            except (ValueError, OverflowError, TypeError, KeyError) as error:
                batch.rejected.append(Rejected(message, f"invalid:{type(error).__name__}", str(error)))
        # The books as of the end of this batch (the next batch may change them before this one commits).
        batch.book_rows = [(self.consumer, m, self.books[m].seq, self.books[m].bucket, *self.books[m].state(),
                            self.books[m].pending) for m in sorted(batch.books)]
        return batch

    @staticmethod
    def _resume(stored_last: StoredLast, journal: Journal, batch_markets: set[str], tracker: SequenceTracker,
                known: set[str]) -> None:
        todo = sorted(batch_markets - known)
        if not todo:
            return
        for market, last in stored_last(journal, todo).items():
            tracker.resume(market, int(last))
        known.update(todo)

    def _prepare_one(self, batch: Batch, logical: str, message: Message, v: dict[str, Any]) -> None:
        market = v["market"]
        if logical == ORDERS_EVENTS:
            row = event_row(v)
            since = self.rereading_before_ms
            self._sequence(batch, ORDERS_EVENTS, market, v["seq"], message, row, digest(message.value()),
                           since is not None and v["ts"] < since)
        elif logical == MD_CANDLES:
            key = (market, v["interval"], v["window_start"])
            update = candle_row(v)
            previous = batch.candles.get(key)
            if previous is not None and candle_conflict(previous, update):
                raise RecordConflict(
                    f"md.candles record {market} {v['interval']} window {v['window_start']} at {where(message)} "
                    f"repeats version last_trade_id={v['last_trade_id']} final={v['final']} of the window with other "
                    "values: two histories of one candle; the sink stops without writing its batch")
            batch.candles[key] = candle_fold(previous, update)
            batch.candle_src[key] = message
        else:
            self._apply_book(batch, market, v, message)

    def _sequence(self, batch: Batch, logical: str, market: str, value: int, message: Message,
                  row: tuple[Any, ...], record_digest: bytes, rereading: bool) -> None:
        """Place a record the fast path did not take: in sequence or after a gap it is a row to
        write; a value already seen is a candidate, decided against the table by the writer."""
        tracker = self.trade_seq if logical == TRADES else self.event_seq
        expected = tracker.last.get(market, tracker.start) + 1
        verdict = tracker.observe(market, value)
        if verdict is Verdict.DUPLICATE:
            candidates = batch.trade_candidates if logical == TRADES else batch.event_candidates
            candidates.append(Candidate((market, value), row, record_digest, message, expected_stored=rereading,
                                        expected=expected))
            return
        if verdict is Verdict.GAP:
            batch.anomalies.append(Anomaly.at(message, logical, market, "gap", expected, value))
        if logical == TRADES:
            batch.trades.append((*row, record_digest))
            batch.trade_src.append(message)
        else:
            batch.events.append((*row, record_digest))
            batch.event_src.append(message)

    def _apply_book(self, batch: Batch, market: str, v: dict[str, Any], message: Message) -> None:
        book = self.books.get(market)
        if book is None:
            book = self.books[market] = Book()
        step = apply_book(book, v, self.interval_ms)
        if step.brk is not None:
            batch.anomalies.append(Anomaly.at(message, MD_BOOK, market, "book_break", *step.brk))
        if step.applied and book.synced:
            batch.books.add(market)
        if step.snapshot is not None:
            batch.snapshots.append(snapshot_row(step.snapshot))
