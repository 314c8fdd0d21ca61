"""The ticker processor: faust-streaming folds ``trades`` and ``md.book`` into one ticker per market
on ``md.ticker`` (best bid/ask, last trade, rolling 24 h figures; the fold is
``streams.processors.ticker``). Computed once here; the WebSocket gateway and others read the topic.

Design:

- One faust app (its own, beside the candle processor: app id ``<namespace prefix>xchg-ticker``)
  with one agent over the namespaced ``trades`` and ``md.book`` topics. Both are keyed by market
  and have the same partition count (checked at start-up, ``check_inputs``), so faust's assignor
  puts partition *p* of both, and of the table's changelog, in one co-partitioned group: the worker
  that owns a market sees all of its trades and book deltas. Records travel as raw bytes, decoded
  and encoded with the project ``Codec``.
- The worker reads committed records only and takes every broker (``faust_runtime.CommittedApp``).
- State: a plain faust ``Table`` keyed by market, whose value is the market's JSON state
  (``streams.processors.ticker``: the last trade, at most 1440 per-minute buckets of the 24 h
  window, the aggregated book levels and the last applied ``book_seq``).
- **Coalescing:** tickers are published by the flush, not per input: every ``FLUSH_RECORDS``
  inputs or ``FLUSH_S`` seconds, one ``md.ticker`` record per market whose ticker changed since
  the previous flush (at most one per market per flush), keyed by market, in the market's own
  partition (the input partition). An input changes the ticker when it is a new trade or completes
  an md.book delta; records already folded and leading parts of a split delta do not.
- **Output before state, state before offsets.** Input events are consumed with manual acks
  (``noack``). A flush (1) takes, without yielding, the tickers, the states and the input events
  folded so far; (2) publishes the tickers and waits until the broker has acknowledged them;
  (3) only then writes those states to the changelog (``<app id>-ticker-changelog``) and waits
  for their acknowledgement; (4) only then acks the input events, so that faust may commit their
  offsets (it commits acked offsets only, on its own clock). Hence at any moment:
  committed input offsets <= the changelog's states <= the published tickers.
- **Recovery** (a crash, a SIGKILL, a rebalance): faust restores the table from the changelog,
  the consumer resumes at the committed offsets. The inputs between the committed offsets and the
  changelog's states are already in the restored state: the fold skips them (trades with
  ``trade_id <= last``, md.book records with ``book_seq`` already applied), so nothing is counted
  twice. The inputs after the changelog's states are folded again from the restored state, so
  nothing is lost; their tickers, if already published, are published again with the same
  content (``md.ticker`` is compacted and consumers keep the latest per market). Unflushed state
  is dropped on revocation (``forget``) and after a crash, never written.
- **Failures:** an exception in the agent or in a flush stops the flush for good (a half-folded
  state never reaches the changelog), logs the error and stops the worker; ``run`` returns with
  ``Stats.crashed`` set and ``xchg ticker run`` exits ``EXIT_AGENT_CRASHED`` (70), for a process manager to
  restart it (faust would otherwise keep a live process without its agent). If the graceful stop
  hangs, the process exits with that code after ``CRASH_EXIT_GRACE_S``. Undecodable input records
  are skipped and counted (the engine writes only valid ones).
- Test hook: the fault point ``ticker-fold`` (``streams.runtime.crashpoints``) raises in the agent
  before a fold, to test the crash exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust

from streams.errors import EXIT_AGENT_CRASHED
from streams.observability import get_logger
from streams.processors.faust_runtime import read_committed_range, worker_app
from streams.processors.ticker import State, fold, new_state, ticker, to_record
from streams.runtime.crashpoints import fault_point
from streams.runtime.namespace import Namespace
from streams.serde.codec import Codec, DecodeError
from streams.serde.topics import MD_BOOK, MD_TICKER, TRADES

FLUSH_RECORDS = 2000  # inputs between flushes (at most; see the module doc)
FLUSH_S = 0.05  # and at most this long
CRASH_EXIT_GRACE_S = 30.0  # a crashed worker that has not stopped by then exits hard


class InputsNotCopartitioned(RuntimeError):
    """``trades`` and ``md.book`` are missing or have different partition counts."""


@dataclass(frozen=True)
class TickerConfig:
    bootstrap: str
    namespace: Namespace
    partitions: int = 4
    idle_exit_s: float | None = None
    commit_interval_s: float = 0.5
    session_timeout_s: float = 10.0
    instance_id: str = "ticker-1"  # static group membership: a restarted worker gets its partitions back at once
    schema_registry_url: str | None = None
    data_dir: Path | None = None  # faust's data folder (empty with the memory store); None: a temporary one

    @property
    def app_id(self) -> str:
        return f"{self.namespace.prefix}xchg-ticker"


@dataclass
class Stats:
    folded: int = 0  # inputs that changed a ticker
    skipped: int = 0  # inputs already folded, or leading parts of a split delta
    published: int = 0
    undecodable: int = 0
    gaps: int = 0
    refetched: int = 0  # records folded from the topic (past the folded position, see the module doc)
    crashed: str | None = None  # why the agent stopped, if it failed: the worker then exits non-zero
    last_event: float = 0.0
    started: float = 0.0


def check_inputs(config: TickerConfig) -> int:
    """The common partition count of the namespaced ``trades`` and ``md.book`` topics;
    ``InputsNotCopartitioned`` if either is missing or the counts differ."""
    from streams.runtime.reader import standalone_consumer, topic_partitions

    consumer = standalone_consumer(config.bootstrap)
    try:
        counts = {name: len(topic_partitions(consumer, config.namespace(name))) for name in (TRADES, MD_BOOK)}
    finally:
        consumer.close()
    if 0 in counts.values() or len(set(counts.values())) != 1:
        raise InputsNotCopartitioned(
            f"the ticker needs {config.namespace(TRADES)} and {config.namespace(MD_BOOK)} with the same partition "
            f"count (co-partitioned by market); found {counts} (0: missing; run `xchg topics apply`)")
    return counts[TRADES]


def _progress_key(logical: str, partition: int) -> bytes:
    return f"__progress__:{logical}:{partition}".encode()


def read_inputs(config: TickerConfig, codec: Codec, logical: str, topic: str, partition: int, start: int,
                end: int) -> list[dict[str, Any]]:
    """The decodable committed records at offsets ``start <= offset < end`` of one input partition."""
    found: list[dict[str, Any]] = []
    for message in read_committed_range(config.bootstrap, topic, partition, start, end):
        with contextlib.suppress(DecodeError):
            found.append(codec.decode(logical, message.value()))
    return found


def build_app(config: TickerConfig) -> tuple[faust.App, Stats]:
    log = get_logger("ticker")
    codec = Codec(schema_registry_url=config.schema_registry_url)
    stats = Stats(started=time.monotonic(), last_event=time.monotonic())
    # unacked (unflushed) inputs are read again after a restart
    app = worker_app(config, stream_wait_empty=False)
    inputs = {config.namespace(TRADES): TRADES, config.namespace(MD_BOOK): MD_BOOK}
    source = app.topic(*inputs, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                       partitions=config.partitions)
    output = app.topic(config.namespace(MD_TICKER), key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", partitions=config.partitions)
    table = app.Table("ticker", default=None, partitions=config.partitions, key_type=bytes, value_type=bytes)
    changelog = table.changelog_topic
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    # The state of every market folded since the last recovery: newer than the table while a
    # flush is pending, and the same object the fold keeps updating.
    live: dict[bytes, State] = {}
    changed: dict[bytes, int] = {}  # market key -> partition: tickers to publish, states to write
    held: list[Any] = []  # input events folded since the last flush, acked once their state is written
    manual: list[faust.StreamT[bytes]] = []  # the agent's manual-ack stream
    # (logical topic, partition) -> next input offset folded; and those not yet in the changelog.
    expected: dict[tuple[str, int], int] = {}
    dirty_progress: dict[tuple[str, int], int] = {}
    flush_lock = asyncio.Lock()
    flushed_at = [time.monotonic()]
    stopped = [False]

    def crash(error: BaseException, where: str) -> None:
        """Stop for good: nothing more is flushed, the worker stops, ``run`` reports it."""
        if stopped[0]:
            return
        stopped[0] = True
        stats.crashed = f"{where}: {type(error).__name__}: {error}"
        log.error("ticker crashed; stopping the worker", error=stats.crashed)
        timer = threading.Timer(CRASH_EXIT_GRACE_S, os._exit, args=(EXIT_AGENT_CRASHED,))
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)

    async def flush() -> None:
        """Publish the changed tickers, then write their states, then ack their inputs."""
        async with flush_lock:
            flushed_at[0] = time.monotonic()
            if stopped[0] or (not changed and not held and not dirty_progress):
                return
            # The cut, taken without yielding: these tickers and states reflect exactly the inputs
            # in ``events``.
            tickers = [(key, codec.encode(MD_TICKER, to_record(ticker(live[key]))), partition)
                       for key, partition in changed.items()]
            states = [(key, json.dumps(live[key], separators=(",", ":")).encode(), partition)
                      for key, partition in changed.items()]
            positions = [(_progress_key(logical, partition), str(offset).encode(), partition)
                         for (logical, partition), offset in dirty_progress.items()]
            events = held[:]
            changed.clear()
            held.clear()
            dirty_progress.clear()
            sent: list[Awaitable[Any]] = []
            for key, value, partition in tickers:
                sent.append(await output.send(key=key, value=value, partition=partition))
            await asyncio.gather(*sent)
            stats.published += len(tickers)
            written: list[Awaitable[Any]] = []
            for key, encoded, partition in states + positions:
                table.data[key] = encoded
                written.append(await changelog.send(key=key, value=encoded, partition=partition))
            await asyncio.gather(*written)
            if stopped[0]:
                return
            for event in events:
                await manual[0].ack(event)

    async def forget() -> None:
        """Drop what is folded but not flushed: the table (restored from the changelog) is the
        truth again, and the unacked inputs are read again."""
        async with flush_lock:
            for pending in (live, changed, expected, dirty_progress):
                pending.clear()
            held.clear()

    @app.on_partitions_revoked.connect
    async def on_revoked(*_: Any, **__: Any) -> None:
        # Partitions may move: never flush state for one this worker no longer owns.
        await forget()

    def apply(logical: str, record: dict[str, Any], partition: int) -> None:
        key = record["market"].encode()
        state = live.get(key)
        if state is None:
            stored = table.get(key)
            state = live[key] = new_state(record["market"]) if stored is None else json.loads(stored)
        if logical == TRADES and record["trade_id"] > state["last"] + 1:
            stats.gaps += 1  # gap-free per market: the state lacks trades before this one
            log.error("trade ids skip in the input", market=record["market"], expected=state["last"] + 1,
                      got=record["trade_id"])
        breaks = state["breaks"]
        if fold(state, logical, record):
            changed[key] = partition
            stats.folded += 1
        else:
            stats.skipped += 1
        if state["breaks"] != breaks:
            log.error("md.book chain break: applied anyway, exact again at the next snapshot",
                      market=record["market"], book_seq=record.get("book_seq"), breaks=state["breaks"])

    @app.agent(source)
    async def process(stream: faust.StreamT[bytes]) -> None:
        events = cast(faust.Stream[bytes], stream).noack()
        manual[:] = [events]
        try:
            async for event in events.events():
                stats.last_event = time.monotonic()
                if stopped[0]:
                    continue
                if not recovery.completed.is_set():
                    # Never read the table before faust has restored it from the changelog.
                    await recovery.completed.wait()
                    await forget()
                message = event.message
                logical, partition, offset = inputs[message.topic], message.partition, message.offset
                position = (logical, partition)
                known = expected.get(position)
                start = known
                if start is None:
                    # The first record of this partition since the table was restored: records
                    # from the flushed position on may not be folded (faust can skip, and ack,
                    # records around a rebalance or recovery).
                    stored = table.get(_progress_key(logical, partition))
                    start = int(stored) if stored else 0
                # Later, one offset more is the marker ending a transaction; more is an aborted
                # transaction (nothing to read) or skipped records: fold them from the topic.
                if offset > start + (0 if known is None else 1):
                    missed = read_inputs(config, codec, logical, message.topic, partition, start, offset)
                    stats.refetched += len(missed)
                    if missed:
                        log.info("folding records past the folded position from the topic", topic=message.topic,
                                 partition=partition, expected=start, got=offset, records=len(missed))
                    for earlier in missed:
                        fault_point("ticker-fold")
                        apply(logical, earlier, partition)
                try:
                    record = codec.decode(logical, event.value)
                except DecodeError as error:
                    stats.undecodable += 1
                    log.warning("undecodable input skipped", topic=message.topic, partition=partition,
                                offset=offset, reason=error.reason)
                else:
                    fault_point("ticker-fold")
                    apply(logical, record, partition)
                if known is None or offset + 1 > known:
                    expected[position] = offset + 1
                    dirty_progress[position] = offset + 1
                held.append(event)
                if len(held) >= FLUSH_RECORDS or time.monotonic() - flushed_at[0] >= FLUSH_S:
                    await flush()
        except Exception as error:  # any failure ends the worker, non-zero
            crash(error, "agent")

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def catch_up_when_quiet() -> None:
        # Records faust skipped (and acked) with no later record of their partition to reveal
        # the jump: once the agent has had nothing for a second, any assigned partition whose
        # fetch position is past the folded position by more than a transaction marker is read
        # from the topic up to that position.
        if app.rebalancing or not recovery.completed.is_set() or stopped[0]:
            return
        if time.monotonic() - stats.last_event < 1.0:
            return
        try:
            for tp in [tp for tp in app.consumer.assignment() if tp.topic in inputs]:
                logical = inputs[tp.topic]
                fetched = await app.consumer.position(tp)
                folded = expected.get((logical, tp.partition))
                if folded is None:
                    stored = table.get(_progress_key(logical, tp.partition))
                    folded = int(stored) if stored else 0
                if fetched is None or fetched <= folded + 1 or time.monotonic() - stats.last_event < 1.0:
                    continue
                missed = read_inputs(config, codec, logical, tp.topic, tp.partition, folded, fetched)
                stats.refetched += len(missed)
                if missed:
                    log.info("folding records past the folded position from the topic", topic=tp.topic,
                             partition=tp.partition, expected=folded, got=fetched, records=len(missed))
                for earlier in missed:
                    apply(logical, earlier, tp.partition)
                if fetched > expected.get((logical, tp.partition), 0):
                    expected[(logical, tp.partition)] = fetched
                    dirty_progress[(logical, tp.partition)] = fetched
        except Exception as error:
            crash(error, "catch-up")

    @app.timer(interval=FLUSH_S)  # type: ignore[untyped-decorator]
    async def flush_when_quiet() -> None:
        # The last inputs of a burst: nothing else would flush them. Not during a rebalance: what
        # is unflushed then may belong to partitions moving elsewhere.
        if app.rebalancing or not recovery.completed.is_set() or stopped[0]:
            return
        if time.monotonic() - flushed_at[0] >= FLUSH_S:
            try:
                await flush()
            except Exception as error:
                crash(error, "flush")

    if config.idle_exit_s is not None:
        idle = config.idle_exit_s

        @app.timer(interval=0.5)  # type: ignore[untyped-decorator]
        async def idle_check() -> None:
            # The idle clock runs only while every assigned input partition is read to its end
            # and everything folded is flushed.
            ready = not app.rebalancing and recovery.completed.is_set() and not held and not changed
            tps = [tp for tp in app.consumer.assignment() if tp.topic in inputs] if ready else []
            for tp in tps:
                high, position = app.consumer.highwater(tp), await app.consumer.position(tp)
                if high is None or position is None or position < high:
                    ready = False
            if not ready or not tps:
                stats.last_event = time.monotonic()
                return
            if time.monotonic() - stats.last_event > idle:
                log.info("idle, stopping", folded=stats.folded, skipped=stats.skipped, published=stats.published)
                os.kill(os.getpid(), signal.SIGTERM)

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def report() -> None:
        log.info("progress", folded=stats.folded, skipped=stats.skipped, published=stats.published)

    @app.task  # type: ignore[untyped-decorator]
    async def started() -> None:
        await asyncio.sleep(0)
        log.info("ticker started", app_id=config.app_id, partitions=config.partitions)

    return app, stats


def run(config: TickerConfig) -> Stats:
    """Run the worker until SIGTERM/SIGINT (or ``idle_exit_s`` without input, or a crash:
    ``Stats.crashed`` says why)."""
    app, stats = build_app(config)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    return stats
