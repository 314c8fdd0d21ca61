"""``xchg db rebuild``: rebuild the analytics tables from the topics, then verify them against the topics.

Exclusion: the rebuild holds the database's sink lock exclusively from before it deletes anything
until its verification is done (``lease.py``). It is refused, with one line, while any sink of the
database runs, and every sink is refused while it runs; a sink that was cut off from the database
meanwhile is fenced when it comes back (its positions in memory predate the reset).

From the beginning: the tables, every stored position and every sink's book state are emptied,
the database is bound to the current stream (``binding.py``: this is how a database holding
another stream's rows is taken over), and the rebuild's sink runs from the low watermarks until
caught up.

From a time T (``--since``): the database must already hold this stream (or nothing). Rows with an
event time >= T are deleted, and every candle whose window *ends* after T (the windows T cuts,
and later ones); the sink's book state is dropped. The sink then re-reads

- ``trades`` and ``orders.events`` from the first record the broker timestamped at or after
  T - ``margin`` (the margin covers clocks of producers and brokers that disagree: a record with
  an event time >= T is never appended long before T);
- ``md.candles`` from T's 1-day window start - ``margin`` (the earliest window T cuts);
- ``md.book`` from its low watermark (a book can only be replayed from a complete start).

Re-read records from before T are not skipped on their time: each is compared with the stored row
of its key (``records.classify``): byte-identical is fine, missing is written (so rows lost before
T within the re-read range are repaired), different stops the rebuild with one line.

Verification, over the whole range it vouches for: every topic is read from its low watermark to
its end and every table is compared row for row (all columns, and the record digest) with what the
topics imply: ``trades`` and ``order_events`` by key, ``candles`` as the fold of ``md.candles``,
``book_snapshots`` as the replay of ``md.book``; records dead-lettered by the sink (``dlq.sink``)
are excluded. Rows the topics cannot speak for any more (older than a topic's retention) are
counted and reported as not compared. "verified" is printed only when nothing is missing, extra or
different; rows missing from before T that the rebuild did not re-read make it fail, naming the
remedy (a rebuild from the beginning).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from connectors.timescale import binding
from connectors.timescale.errors import RebuildError, RecordConflict
from connectors.timescale.lease import SinkLease
from connectors.timescale.records import Book, apply_book, candle_fold, comparable
from connectors.timescale.sink import INPUT_TOPICS, SinkConfig, TimescaleSink
from connectors.timescale.tables import (
    CANDLES_TABLE,
    EVENTS_TABLE,
    TRADES_TABLE,
    candle_row,
    event_row,
    trade_row_reader,
)
from streams.processors.candles import INTERVALS
from streams.runtime.clients import consumer_config, raise_if_fatal
from streams.runtime.reader import ReadTimeout, read_range, watermarks
from streams.serde.codec import Codec, DecodeError
from streams.serde.topics import DLQ_SINK, MD_BOOK, MD_CANDLES, ORDERS_EVENTS, TRADES

REREAD_MARGIN = timedelta(minutes=5)
SHOWN = 5  # keys shown per kind of difference

Key = tuple[Any, ...]


@dataclass
class TableCheck:
    """One table compared with what the topics imply, over the range the topics still hold."""

    name: str
    topic: int = 0  # rows the topics imply
    table: int = 0  # rows of the table compared
    missing: int = 0
    unexpected: int = 0  # rows no record implies (extra copies of a key included)
    different: int = 0
    unchecked: int = 0  # rows older than the topic's retention: not compared
    missing_before: int = 0  # of ``missing``, rows from before the rebuild's --since time
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.different)

    def problems(self) -> str:
        parts = [f"{n} {what}" for n, what in ((self.missing, "missing"), (self.unexpected, "unexpected"),
                                               (self.different, "different")) if n]
        if self.missing_before:
            parts.append(f"{self.missing_before} of the missing from before --since, which it did not re-read: "
                         "rebuild from the beginning (without --since) to restore them")
        return f"{self.name}: {', '.join(parts)}" + (f" (e.g. {'; '.join(self.examples)})" if self.examples else "")


def compare(name: str, expected: Mapping[Key, tuple[tuple[Any, ...], bytes | None]],
            stored: Iterable[tuple[Key, tuple[Any, ...], bytes | None]],
            vouched: Callable[[Key], bool] = lambda key: True,
            before: Callable[[tuple[Any, ...]], bool] = lambda values: False) -> TableCheck:
    """Compare stored rows (key, comparable values, digest) with the expected ones. A stored row
    whose key nothing implies counts as unexpected when ``vouched(key)``, else as unchecked (the
    topic no longer holds its range); ``before(values)`` marks missing rows from before --since.
    Equal means equal values and, when both are known, equal record digests."""
    check = TableCheck(name, topic=len(expected))
    seen: set[Key] = set()
    for key, values, digest in stored:
        want = expected.get(key)
        if want is None:
            if vouched(key):
                check.unexpected += 1
                check.table += 1
                _example(check, f"unexpected {key}")
            else:
                check.unchecked += 1
            continue
        check.table += 1
        if key in seen:
            check.unexpected += 1
            _example(check, f"second row of {key}")
            continue
        seen.add(key)
        want_values, want_digest = want
        if want_values != values or (want_digest is not None and digest is not None and want_digest != digest):
            check.different += 1
            _example(check, f"different {key}")
    for key, (values, _) in expected.items():
        if key not in seen:
            check.missing += 1
            if before(values):
                check.missing_before += 1
            _example(check, f"missing {key}")
    return check


def _example(check: TableCheck, text: str) -> None:
    if len(check.examples) < SHOWN:
        check.examples.append(text)


@dataclass
class RebuildReport:
    since: datetime | None = None
    records_total: int = 0  # offsets between the start positions and the ends (records + markers)
    records: int = 0
    dead_letters: int = 0  # records of the topics the sink dead-lettered (not expected in the tables)
    notes: list[str] = field(default_factory=list)
    checks: dict[str, TableCheck] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks.values())

    def _count(self, table: str, attr: str) -> int:
        check = self.checks.get(table)
        return int(getattr(check, attr)) if check else 0

    @property
    def topic_trades(self) -> int:
        return self._count("trades", "topic")

    @property
    def db_trades(self) -> int:
        return self._count("trades", "table")

    @property
    def topic_events(self) -> int:
        return self._count("order_events", "topic")

    @property
    def db_events(self) -> int:
        return self._count("order_events", "table")

    def lines(self) -> list[str]:
        """What the CLI prints: counts per table, what was not compared, the verdict."""
        out = [f"trades: topic {self.topic_trades}, table {self.db_trades}; "
               f"order events: topic {self.topic_events}, table {self.db_events}",
               f"candles: topic {self._count('candles', 'topic')}, table {self._count('candles', 'table')}; "
               f"L2 snapshots: replayed {self._count('book_snapshots', 'topic')}, "
               f"table {self._count('book_snapshots', 'table')}"]
        unchecked = [f"{c.unchecked} {c.name}" for c in self.checks.values() if c.unchecked]
        if unchecked:
            out.append(f"not compared (older than what the topics still hold): {', '.join(unchecked)}")
        if self.dead_letters:
            out.append(f"dead-lettered by the sink (in {DLQ_SINK}, not in the tables): {self.dead_letters} records")
        out.extend(self.notes)
        return out


# -- reading the topics -------------------------------------------------------------------------------


def _kafka(what: str, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A Kafka call of the rebuild: a fatal client error is ``ClientFatal``, any other one line."""
    try:
        return action(*args, **kwargs)
    except KafkaException as error:
        raise_if_fatal(error.args[0])
        raise RebuildError(f"{what}: {error.args[0].str()}") from None
    except ReadTimeout as error:
        raise RebuildError(f"{what}: {error}") from None


def _marks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    marks: tuple[int, int] = _kafka(f"reading the watermarks of {topic}[{partition}]", watermarks, consumer, topic,
                                    partition)
    return marks


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    meta = _kafka(f"reading the metadata of {topic}", consumer.list_topics, topic, timeout=30).topics.get(topic)
    if meta is None or meta.error is not None:
        raise RebuildError(f"topic {topic} does not exist (run `xchg topics apply`)")
    return sorted(meta.partitions)


def _read_all(consumer: Consumer, topic: str) -> Iterator[tuple[int, Message]]:
    """Every committed record of ``topic``, partition after partition, in offset order."""
    for partition in _partitions(consumer, topic):
        low, high = _marks(consumer, topic, partition)
        records = read_range(consumer, topic, partition, low, high)
        while True:
            message = _kafka(f"reading {topic}[{partition}]", next, records, None)
            if message is None:
                break
            yield partition, message


def _truncated(consumer: Consumer, topic: str) -> bool:
    """Whether retention (or a deletion) removed the start of any partition of ``topic``."""
    return any(_marks(consumer, topic, p)[0] > 0 for p in _partitions(consumer, topic))


def _start_offsets(consumer: Consumer, config: SinkConfig, since: datetime | None,
                   margin: timedelta) -> dict[tuple[str, int], int]:
    """Where the rebuild's sink starts in each input partition (see the module docstring)."""
    offsets: dict[tuple[str, int], int] = {}
    day = INTERVALS["1d"]
    for logical in INPUT_TOPICS:
        physical = config.namespace(logical)
        partitions = _partitions(consumer, physical)
        if since is None or logical == MD_BOOK:
            for p in partitions:
                offsets[(physical, p)] = _marks(consumer, physical, p)[0]
            continue
        since_ms = int(since.timestamp() * 1000)
        from_ms = (since_ms - since_ms % day if logical == MD_CANDLES else since_ms) - margin // timedelta(milliseconds=1)
        found = _kafka(f"looking up {physical} by time", consumer.offsets_for_times,
                       [TopicPartition(physical, p, max(from_ms, 0)) for p in partitions], timeout=30)
        for tp in found:
            high = _marks(consumer, physical, tp.partition)[1]
            offsets[(physical, tp.partition)] = high if tp.offset < 0 else tp.offset
    return offsets


# -- the reset ------------------------------------------------------------------------------------------


def reset(conn: psycopg.Connection[Any], config: SinkConfig, offsets: dict[tuple[str, int], int],
          since: datetime | None, identities: dict[str, binding.TopicIdentity], report: RebuildReport) -> None:
    """Delete what is rebuilt and set the rebuild sink's positions, in one transaction (under the
    rebuild's exclusive lock)."""
    with conn.transaction():
        conn.execute("set local statement_timeout = 0")  # deleting a large table may take long
        conn.execute("lock table stream_binding in share row exclusive mode")
        verdict = binding.decide(binding.load(conn), identities, binding.holds_state(conn))
        if since is None:
            if verdict.action == "refuse":
                report.notes.append(f"the database held {verdict.found}; it is now bound to this stream")
            conn.execute("truncate trades, order_events, candles, book_snapshots")
            # Every sink's positions and books describe the rows just deleted.
            conn.execute("delete from kafka_offsets")
            conn.execute("delete from sink_book_state")
            binding.store(conn, identities, f"rebuild {config.name}")
        else:
            if verdict.action == "refuse":
                raise RebuildError(f"cannot rebuild --since {since.isoformat()}: it keeps the rows before that time, "
                                   f"and {verdict.reason}")
            if verdict.action == "bind":
                binding.store(conn, identities, f"rebuild {config.name}")
            for table in ("trades", "order_events", "book_snapshots"):
                conn.execute(f"delete from {table} where ts >= %s", (since,))
            for interval, length in INTERVALS.items():  # every window that ends after the time
                conn.execute("delete from candles where interval = %s and window_start > %s",
                             (interval, since - timedelta(milliseconds=length)))
            conn.execute("delete from sink_book_state where consumer = %s", (config.name,))
        conn.execute("delete from kafka_offsets where consumer = %s", (config.name,))
        with conn.cursor() as cur:
            cur.executemany("insert into kafka_offsets (consumer, topic, partition, next_offset) values (%s, %s, %s, %s)",
                            [(config.name, t, p, o) for (t, p), o in sorted(offsets.items())])


# -- verification ---------------------------------------------------------------------------------------


def _dead_lettered(consumer: Consumer, config: SinkConfig) -> set[tuple[str, int, int]]:
    """(topic, partition, offset) of every record the sink sent to ``dlq.sink``."""
    out: set[tuple[str, int, int]] = set()
    for _, message in _read_all(consumer, config.namespace(DLQ_SINK)):
        headers: dict[str, str] = {}
        raw: Any = message.headers() or []
        for name, value in raw.items() if isinstance(raw, dict) else raw:
            if isinstance(value, bytes):
                headers[name] = value.decode(errors="replace")
        try:
            out.add((headers["source_topic"], int(headers["source_partition"]), int(headers["source_offset"])))
        except (KeyError, ValueError):
            continue
    return out


def _journal_expected(consumer: Consumer, codec: Codec, config: SinkConfig, logical: str,
                      dead: set[tuple[str, int, int]]) -> tuple[dict[Key, tuple[tuple[Any, ...], bytes | None]],
                                                                 dict[str, int], int]:
    """Rows of ``trades`` / ``order_events`` the topic implies (key → values, digest), the lowest
    counter per market it holds, and the number of conflicting records in the topic."""
    from connectors.timescale.records import digest

    physical = config.namespace(logical)
    read_trade = trade_row_reader(codec)
    expected: dict[Key, tuple[tuple[Any, ...], bytes | None]] = {}
    lowest: dict[str, int] = {}
    conflicts = 0
    for partition, message in _read_all(consumer, physical):
        if (physical, partition, message.offset()) in dead:
            continue
        try:
            row = read_trade(message.value()) if logical == TRADES else event_row(codec.decode(logical,
                                                                                             message.value()))
        except (DecodeError, ValueError, OverflowError, TypeError, KeyError):
            continue  # the sink dead-letters these too
        key = (row[0], row[1])
        values, d = comparable(row), digest(message.value())
        seen = expected.get(key)
        if seen is None:
            expected[key] = (values, d)
            lowest[row[0]] = min(lowest.get(row[0], row[1]), row[1])
        elif seen[1] != d:
            conflicts += 1
    return expected, lowest, conflicts


def _candles_expected(consumer: Consumer, codec: Codec, config: SinkConfig,
                      dead: set[tuple[str, int, int]]) -> dict[Key, tuple[tuple[Any, ...], bytes | None]]:
    physical = config.namespace(MD_CANDLES)
    state: dict[Key, tuple[Any, ...]] = {}
    for partition, message in _read_all(consumer, physical):
        if (physical, partition, message.offset()) in dead:
            continue
        try:
            update = candle_row(codec.decode(MD_CANDLES, message.value()))
        except (DecodeError, ValueError, OverflowError, TypeError, KeyError):
            continue
        key = (update[0], update[1], comparable((update[2],))[0])
        state[key] = candle_fold(state.get(key), update)
    return {k: (comparable(v), None) for k, v in state.items()}


def _snapshots_expected(consumer: Consumer, codec: Codec, config: SinkConfig, dead: set[tuple[str, int, int]],
                        truncated: bool) -> tuple[dict[Key, tuple[tuple[Any, ...], bytes | None]], dict[str, int]]:
    """The snapshot rows a replay of ``md.book`` takes, and per market the time up to which the
    table cannot be compared (the first snapshot after a start cut off by retention)."""
    physical = config.namespace(MD_BOOK)
    interval_ms = config.book_snapshot_interval_s * 1000
    books: dict[str, Book] = {}
    expected: dict[Key, tuple[tuple[Any, ...], bytes | None]] = {}
    horizon: dict[str, int] = {}
    for partition, message in _read_all(consumer, physical):
        if (physical, partition, message.offset()) in dead:
            continue
        try:
            delta = codec.decode(MD_BOOK, message.value())
            step = apply_book(books.setdefault(delta["market"], Book()), delta, interval_ms)
        except (DecodeError, ValueError, OverflowError, TypeError, KeyError):
            continue
        if step.snapshot is None:
            continue
        market, ts, seq, bids, asks = step.snapshot
        if truncated and market not in horizon:
            # The live sink's book may have been complete before this point (it read what
            # retention has since removed): its first snapshot here need not match.
            horizon[market] = ts
            continue
        expected[(market, seq, ts)] = ((market, ts, seq, bids, asks), None)
    return expected, horizon


def verify(config: SinkConfig, since: datetime | None, report: RebuildReport) -> None:
    """Compare every table with the topics, from their low watermarks to their ends."""
    codec = Codec(schema_registry_url=config.schema_registry_url)
    consumer = Consumer(consumer_config(config.bootstrap, f"{config.name}-verify"))
    since_ms = int(since.timestamp() * 1000) if since else None
    try:
        dead = _dead_lettered(consumer, config)
        report.dead_letters = len(dead)
        trades, trade_low, trade_conflicts = _journal_expected(consumer, codec, config, TRADES, dead)
        events, event_low, event_conflicts = _journal_expected(consumer, codec, config, ORDERS_EVENTS, dead)
        candles = _candles_expected(consumer, codec, config, dead)
        truncated = {t: _truncated(consumer, config.namespace(t)) for t in INPUT_TOPICS}
        snapshots, horizon = _snapshots_expected(consumer, codec, config, dead, truncated[MD_BOOK])
    finally:
        consumer.close()
    candle_low: dict[tuple[str, str], int] = {}
    for market, interval, start in candles:
        candle_low[(market, interval)] = min(candle_low.get((market, interval), start), start)

    def journal_vouched(low: dict[str, int], topic: str) -> Callable[[Key], bool]:
        return lambda key: not truncated[topic] or (key[0] in low and key[1] >= low[key[0]])

    def before(values: tuple[Any, ...]) -> bool:
        return since_ms is not None and values[2] < since_ms  # values[2]: the row's time

    with psycopg.connect(config.dsn) as conn:
        def stored(query: str, key: Callable[[tuple[Any, ...]], Key],
                   digest_last: bool) -> Iterator[tuple[Key, tuple[Any, ...], bytes | None]]:
            with conn.cursor(name="verify") as cur:  # server-side: the table is streamed, not loaded at once
                cur.execute(query)
                for row in cur:
                    values = comparable(row[:-1] if digest_last else row)
                    d = row[-1] if digest_last else None
                    yield key(values), values, bytes(d) if d is not None else None

        cols = ", ".join(TRADES_TABLE.names)
        report.checks["trades"] = compare(
            "trades", trades, stored(f"select {cols}, record_digest from trades", lambda v: (v[0], v[1]), True),
            journal_vouched(trade_low, TRADES), before)
        cols = ", ".join(EVENTS_TABLE.names)
        report.checks["order_events"] = compare(
            "order events", events,
            stored(f"select {cols}, record_digest from order_events", lambda v: (v[0], v[1]), True),
            journal_vouched(event_low, ORDERS_EVENTS), before)
        cols = ", ".join(f'"{c}"' for c in CANDLES_TABLE.names)
        report.checks["candles"] = compare(
            "candles", candles, stored(f"select {cols} from candles", lambda v: (v[0], v[1], v[2]), False),
            lambda key: not truncated[MD_CANDLES] or key[2] >= candle_low.get((key[0], key[1]), 1 << 62))
        report.checks["book_snapshots"] = compare(
            "L2 snapshots", snapshots,
            (r for r in stored("select market, ts, book_seq, bids, asks from book_snapshots",
                               lambda v: (v[0], v[2], v[1]), False)
             if not (truncated[MD_BOOK] and r[1][1] <= horizon.get(r[0][0], 1 << 62))),
            lambda key: not truncated[MD_BOOK])
    for name, n in (("trades", trade_conflicts), ("order_events", event_conflicts)):
        if n:  # the topic itself holds two records for a key: the tables cannot equal it
            report.checks[name].different += n
            _example(report.checks[name], f"{n} key(s) with two different records in the topic")


# -- the rebuild ---------------------------------------------------------------------------------------


def rebuild(config: SinkConfig, since: datetime | None = None,
            on_start: Callable[[int], Any] | None = None, on_progress: Callable[[int], Any] | None = None,
            markets: list[tuple[str, str, str, int, int, str, str]] | None = None,
            margin: timedelta = REREAD_MARGIN) -> RebuildReport:
    started = time.monotonic()
    report = RebuildReport(since=since)
    identities = binding.kafka_identities(config.bootstrap, config.namespace, INPUT_TOPICS)
    lease = SinkLease(config.dsn, config.name, "rebuild", statement_timeout_ms=config.statement_timeout_ms)
    try:
        conn = lease.connection()  # refused (one line) while any sink of the database runs
        probe = Consumer(consumer_config(config.bootstrap, f"{config.name}-rebuild"))
        try:
            offsets = _start_offsets(probe, config, since, margin)
            report.records_total = sum(_marks(probe, t, p)[1] - o for (t, p), o in offsets.items())
        finally:
            probe.close()
        if on_start is not None:
            on_start(report.records_total)
        reset(conn, config, offsets, since, identities, report)
        sink_config = SinkConfig(**{**config.__dict__, "until_caught_up": True, "idle_exit_s": None,
                                    "max_runtime_s": None,
                                    "rebuild_since_ms": int(since.timestamp() * 1000) if since else None})
        try:
            stats = TimescaleSink(sink_config, markets=markets or (), lease=lease).run(on_batch=on_progress)
        except RecordConflict as error:
            raise RebuildError(f"the rebuild stopped part-way (the tables are partly rebuilt): {error}") from None
        report.records = stats.records
        if stats.late:
            report.notes.append(f"rows missing before the time and re-read: {stats.late} written again")
        verify(config, since, report)  # still under the lease: nothing writes meanwhile
    finally:
        lease.release()
    report.seconds = time.monotonic() - started
    return report


def run_cli(settings: Any, since_text: str | None, yes: bool, console: Any) -> None:
    """``xchg db rebuild`` with a rich progress bar; exits non-zero when verification fails."""
    import typer
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from connectors.timescale.sink import market_rows
    from streams.cli.errors import fail

    since = None
    if since_text:
        try:
            since = datetime.fromisoformat(since_text)
        except ValueError:
            console.print(f"[red]error:[/red] --since {since_text!r} is not an ISO 8601 time")
            raise typer.Exit(2) from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    if not yes:
        typer.confirm(f"delete the analytics rows {'from ' + since.isoformat() if since else 'of every time'}"
                      " and rebuild them from the topics?", abort=True)
    config = SinkConfig.from_settings(settings)
    # The total is the offsets to read; the topics are transactional, so some offsets are
    # transaction markers (or aborted records) and no record: the bar advances by records and is
    # completed at the end, and the summary says how many offsets held none.
    with Progress(TextColumn("rebuilding"), BarColumn(), MofNCompleteColumn(), TextColumn("offsets"),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("rebuild", total=None)
        report = rebuild(config, since,
                         on_start=lambda total: progress.update(task, total=total),
                         on_progress=lambda n: progress.advance(task, n),
                         markets=market_rows(settings.markets_file))
        progress.update(task, completed=report.records_total)
    markers = max(0, report.records_total - report.records)
    console.print(f"records read: {report.records} in {report.seconds:.1f} s, over {report.records_total} offsets "
                  f"({markers} of them transaction markers or aborted records)")
    for line in report.lines():
        console.print(line)
    if not report.ok:
        problems = "; ".join(c.problems() for c in report.checks.values() if not c.ok)
        raise fail(f"verification failed: {problems}")
    console.print("[green]verified:[/green] every row of trades, order events, candles and L2 snapshots equals "
                  "what the topics imply, over all they hold")
