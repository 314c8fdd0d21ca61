"""The market-data processor: faust-streaming turns ``trades`` into OHLCV candles on ``md.candles``.

Design (see design.md §1: derived data is computed once, here, and everything else reads the topic):

- One faust agent over the namespaced ``trades`` topic (key = market). Records travel as raw bytes
  and are decoded/encoded with the project ``Codec`` (Avro single-object framing), so the faust
  serializers never see Avro.
- State: a plain faust ``Table`` keyed by market (co-partitioned with ``trades``) whose value holds,
  for every interval (1m, 1h, 1d), the open candle, a few recently closed candles and the last
  folded ``trade_id`` (``streams.processors.candles``). We chose a plain table over
  ``Table.tumbling``: a windowed table cannot tell when a window is *closed* by the next window's
  first trade (its expiry is wall-clock driven) and it would need a key per window; one key per
  market makes "final when the next window's first trade arrives" a simple comparison and keeps the
  changelog to one record per trade.
- Every update is published to ``md.candles`` keyed by market: the open candle of each interval
  after every trade, and the closed candle again with ``final = true`` when a later window starts.
- Recovery: the table is restored from its changelog topic (``<app id>-candles-changelog``; the
  app id carries the namespace prefix). The processor (1) publishes each trade's candle updates
  without waiting; every ``FLUSH_UPDATES`` updates or ``FLUSH_S`` seconds it (2) takes the states and
  input positions reached so far, waits until the broker has acknowledged every candle published
  up to then, and only then (3) sends those states and positions to the changelog; faust (4)
  commits input offsets on its own clock. The changelog therefore never holds a state whose
  candles are not published. Offsets committed ahead of the changelog's position are caught by
  the position check below (the records in between are folded again from the topic), or, when no
  later record of the partition comes, by the catch-up of a quiet second (``catch_up_when_quiet``). After a
  crash: changelog <= published candles, and the re-read trades with
  ``trade_id <= last`` are skipped (no double counting; their candles are already published), the
  rest are folded again from the recovered state and re-published (the same candles: a repeat,
  which consumers upsert by (market, interval, window_start)). Nothing is lost or counted twice.
- Failures are classified. A trade that would take a candle beyond its type (``candles.overflow``;
  the market registry's bounds make it impossible for the engine's trades) is data: it goes to
  ``dlq.marketdata`` with the reason and the market's other trades go on. Anything else that fails
  on a record is a fault of this code: the process exits at once with ``EXIT_AGENT_CRASHED`` so
  that a process manager restarts it (faust alone would keep a process without its agent).
- Transaction markers take an offset each; a gap of one between consecutive records is a marker,
  not a lost record, and does not send the worker back to the topic unless the trade after it
  shows its market lacks a trade (faust can skip records: ``faust_runtime``).
- The worker reads committed trades only and takes every broker (``faust_runtime.CommittedApp``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from streams.errors import EXIT_AGENT_CRASHED
from streams.observability import get_logger
from streams.processors.candles import fold, new_state, overflow, skip, to_record
from streams.processors.faust_runtime import read_committed_range, worker_app
from streams.runtime.crashpoints import fault_point
from streams.runtime.namespace import Namespace
from streams.serde.codec import Codec, DecodeError
from streams.serde.topics import DLQ_MARKETDATA, MD_CANDLES, TRADES

FLUSH_UPDATES = 1000  # candle updates between changelog flushes (at most; see the module doc)
FLUSH_S = 0.05  # and at most this long


@dataclass(frozen=True)
class MarketDataConfig:
    bootstrap: str
    namespace: Namespace
    partitions: int = 4
    idle_exit_s: float | None = None
    commit_interval_s: float = 0.5
    session_timeout_s: float = 10.0
    instance_id: str = "marketdata-1"  # static group membership: a restarted worker gets its partitions back at once
    schema_registry_url: str | None = None
    # faust's data folder (empty with the in-memory store, but faust creates it); None: a
    # temporary folder, never the working directory.
    data_dir: Path | None = None

    @property
    def app_id(self) -> str:
        return f"{self.namespace.prefix}xchg-marketdata"


@dataclass
class Stats:
    trades: int = 0
    skipped: int = 0
    published: int = 0
    undecodable: int = 0
    dead: int = 0  # trades dead-lettered: a candle would have overflowed
    gaps: int = 0
    refetched: int = 0
    last_event: float = 0.0
    started: float = 0.0
    first_trade: float = 0.0


def read_trades(config: MarketDataConfig, codec: Codec, topic: str, partition: int, start: int,
                end: int) -> list[tuple[dict[str, Any], bytes]]:
    """The decodable committed trades at offsets ``start <= offset < end`` of one partition, each
    with its record value."""
    found: list[tuple[dict[str, Any], bytes]] = []
    for message in read_committed_range(config.bootstrap, topic, partition, start, end):
        try:
            found.append((codec.decode(TRADES, message.value()), message.value()))
        except DecodeError:
            continue
    return found


def build_app(config: MarketDataConfig) -> tuple[faust.App, Stats]:
    log = get_logger("marketdata")
    codec = Codec(schema_registry_url=config.schema_registry_url)
    stats = Stats(started=time.monotonic(), last_event=time.monotonic())
    app = worker_app(config)
    trades = app.topic(config.namespace(TRADES), key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw", partitions=config.partitions)
    candles = app.topic(config.namespace(MD_CANDLES), key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw", partitions=config.partitions)
    dead_letters = app.topic(config.namespace(DLQ_MARKETDATA), key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")
    table = app.Table("candles", default=None, partitions=config.partitions, key_type=bytes, value_type=bytes)
    changelog = table.changelog_topic
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    # The state of every market folded since the last recovery: newer than the table while a
    # flush is pending, and the same object fold() keeps updating.
    live: dict[bytes, dict[str, Any]] = {}
    # Since the last flush: candle sends not yet acknowledged, states and positions not yet in
    # the changelog (see the module doc: the changelog must never be ahead of the candles).
    unacked: list[Awaitable[Any]] = []
    dirty: dict[bytes, int] = {}  # market key -> partition, for the states in ``live`` to flush
    dirty_progress: dict[int, int] = {}  # partition -> next input offset
    flush_lock = asyncio.Lock()
    flushed_at = [time.monotonic()]

    async def publish(key: bytes, updates: list[dict[str, Any]]) -> None:
        """Send the updates; their acknowledgements are awaited by the next flush."""
        for candle in updates:
            unacked.append(await candles.send(key=key, value=codec.encode(MD_CANDLES, to_record(candle))))
        stats.published += len(updates)

    async def flush() -> None:
        """Put what has been folded so far into the changelog, once its candles are acknowledged."""
        async with flush_lock:
            flushed_at[0] = time.monotonic()
            if not dirty and not dirty_progress and not unacked:
                return
            # A consistent cut, taken without yielding: these states include exactly the trades
            # whose candle sends are in ``waiting``.
            waiting = unacked[:]
            unacked.clear()
            states = {key: (json.dumps(live[key], separators=(",", ":")).encode(), partition)
                      for key, partition in dirty.items() if key in live}
            positions = dict(dirty_progress)
            dirty.clear()
            dirty_progress.clear()
            await asyncio.gather(*waiting)
            for key, (encoded, partition) in states.items():
                table.data[key] = encoded
                await changelog.send(key=key, value=encoded, partition=partition)
            for partition, position in positions.items():
                progress_key = f"__progress__:{partition}".encode()
                table.data[progress_key] = str(position).encode()
                await changelog.send(key=progress_key, value=table.data[progress_key], partition=partition)

    progress: dict[int, int] = {}  # partition -> next input offset folded (also in the table)
    # Counts forget() calls: a record whose folding spanned one (a revocation while it awaited a
    # send) must not write its position back, or the next record of a re-assigned partition
    # would skip the position check.
    forgotten = [0]

    async def forget() -> None:
        """Drop what is folded but not flushed, and the in-memory states and positions: the
        table (restored from the changelog) is the truth again, and the position check folds the
        records between its position and the consumer's again (their candles repeat)."""
        async with flush_lock:
            for pending in (live, dirty, dirty_progress, progress):
                pending.clear()
            unacked.clear()
            forgotten[0] += 1

    @app.on_partitions_revoked.connect
    async def on_revoked(*_: Any, **__: Any) -> None:
        # Partitions may move: never flush state for one this worker no longer owns.
        await forget()

    def state_of(market: str) -> dict[str, Any]:
        """The market's live state (from the table the first time it is needed)."""
        key = market.encode()
        state = live.get(key)
        if state is None:
            stored = table.get(key)
            state = live[key] = new_state() if stored is None else json.loads(stored)
        return state

    async def apply(trade: dict[str, Any], value: bytes, partition: int, source: str) -> None:
        """Fold one trade into its market's live state and publish its candle updates (the state
        reaches the changelog with the next flush). A trade that would overflow a candle goes to
        the dead letters with the reason instead (data, not a fault: processing goes on)."""
        market = trade["market"]
        key = market.encode()
        state = state_of(market)
        if trade["trade_id"] > state["last"] + 1:
            # Trade ids are gap-free per market: the state lacks trades before this one.
            stats.gaps += 1
            log.error("trade ids skip in the input", market=market, expected=state["last"] + 1,
                      got=trade["trade_id"])
        fault_point("candle-fold")
        problem = overflow(state, trade) if trade["trade_id"] > state["last"] else None
        if problem is not None:
            stats.dead += 1
            log.error("trade dead-lettered: a candle would overflow", market=market, trade_id=trade["trade_id"],
                      reason=problem)
            unacked.append(await dead_letters.send(key=key, value=value, headers={
                "xchg.error.reason": b"candle_overflow", "xchg.error.detail": problem.encode(),
                "xchg.source": source.encode()}))
            skip(state, trade)
            if live.get(key) is state:
                dirty[key] = partition
            return
        updates = fold(state, trade)
        if not updates:
            stats.skipped += 1  # already folded before a restart; its candles were published then
            return
        # Candles now; the state goes to the changelog at the next flush, after their
        # acknowledgement. (Sent by flush() rather than through ``table[key] = ...``, which queues
        # it in faust's send_soon buffer, whose flush gives up after 0.1 s.)
        await publish(key, updates)
        if live.get(key) is state:  # not forgotten by a revocation meanwhile
            dirty[key] = partition
        stats.trades += 1

    async def handle(event: Any) -> None:
        """Fold one input record (and any records before it that were not folded yet)."""
        stats.last_event = last_record[0] = time.monotonic()
        if not stats.first_trade:
            stats.first_trade = stats.last_event
        if not recovery.completed.is_set():
            # Never read the table before faust has restored it from the changelog.
            await recovery.completed.wait()
            await forget()
        topic, partition, offset = event.message.topic, event.message.partition, event.message.offset
        progress_key = f"__progress__:{partition}".encode()
        generation = forgotten[0]
        known = progress.get(partition)
        if known is None:
            # The first record of this partition since the table was restored or the partition
            # assigned. No recorded position: nothing was flushed, so everything before this
            # record (from the start of the log) may be unfolded.
            stored = table.get(progress_key)
            expected = int(stored) if stored else 0
        else:
            expected = known
        try:
            trade: dict[str, Any] | None = codec.decode(TRADES, event.value)
        except DecodeError as error:
            trade = None
            stats.undecodable += 1
            log.warning("undecodable trade skipped", reason=error.reason, offset=offset)
        # Records between the position and this one have not been folded: offsets committed
        # before a flush and then a crash, or records faust skipped (see faust_runtime). Fold them
        # from the topic first. One offset past a record is usually the marker of the transaction
        # that record ended (one transactional producer writes each trades partition), not a lost
        # record: only the first record after a restore, whose position may be that of a record,
        # checks every gap, and later a gap of one is read again only when this trade's id shows
        # that its market lacks a trade. A gap of more than one is an aborted transaction
        # (read_committed finds nothing in it) or records moved past.
        jumped = offset - expected > (0 if known is None else 1)
        lacking = (trade is not None and offset > expected
                   and trade["trade_id"] > state_of(trade["market"])["last"] + 1)
        if jumped or lacking:
            missed = read_trades(config, codec, topic, partition, expected, offset)
            stats.refetched += len(missed)
            log.info("folding records past the flushed position from the topic", partition=partition,
                     expected=expected, got=offset, records=len(missed))
            for earlier, value in missed:
                await apply(earlier, value, partition, f"{topic}/{partition}")
        if trade is not None:
            await apply(trade, event.value, partition, f"{topic}/{partition}/{offset}")
        if forgotten[0] == generation and (known is None or offset + 1 > known):
            progress[partition] = offset + 1
            dirty_progress[partition] = offset + 1
        if len(unacked) >= FLUSH_UPDATES or time.monotonic() - flushed_at[0] >= FLUSH_S:
            await flush()

    @app.agent(trades)
    async def process(stream: faust.StreamT[bytes]) -> None:
        # The iteration itself stays faust's (its errors during rebalances are its own to
        # handle); a failure of this worker's code on a record ends the process at once.
        async for event in stream.events():
            try:
                await handle(event)
            except Exception as error:
                message = event.message
                crash(error, topic=message.topic, partition=message.partition, offset=message.offset)

    def crash(error: Exception, **where: Any) -> None:
        """End the worker now, non-zero. faust would otherwise keep the process alive without its
        agent: no candles for any market while it looks healthy, and nothing restarts it. The
        exit is immediate, like a SIGKILL, which recovery is built for: a graceful stop could
        flush a state that the failed record half changed, putting the changelog ahead of the
        published candles."""
        log.error("candle agent crashed; stopping the worker", error=f"{type(error).__name__}: {error}", **where)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_AGENT_CRASHED)

    # When the agent last got a record (the idle check moves ``stats.last_event`` on its own).
    last_record = [time.monotonic()]

    def folded_position(partition: int) -> int:
        """The next input offset of ``partition`` whose folding this worker knows of."""
        known = progress.get(partition)
        if known is not None:
            return known
        stored = table.get(f"__progress__:{partition}".encode())
        return int(stored) if stored else 0

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def catch_up_when_quiet() -> None:
        # Offsets committed ahead of the changelog (a crash before a flush) and then no further
        # record of that partition: the position check in handle() never runs, and the records in
        # between would never be folded. Once the agent has had nothing for a second, fold what
        # lies between the folded position and the fetch position from the topic. (A trade folded
        # twice by this and handle() is skipped by its trade id.)
        if app.rebalancing or not recovery.completed.is_set() or time.monotonic() - last_record[0] < 1.0:
            return
        tps = [tp for tp in app.consumer.assignment() if tp.topic == trades.get_topic_name()]
        for tp in tps:
            try:
                fetched = await app.consumer.position(tp)
                folded = folded_position(tp.partition)
                if fetched is None or fetched <= folded or time.monotonic() - last_record[0] < 1.0:
                    continue
                generation = forgotten[0]
                missed = read_trades(config, codec, tp.topic, tp.partition, folded, fetched)
                stats.refetched += len(missed)
                if missed:
                    log.info("folding records past the flushed position from the topic", partition=tp.partition,
                             expected=folded, got=fetched, records=len(missed))
                for earlier, value in missed:
                    await apply(earlier, value, tp.partition, f"{tp.topic}/{tp.partition}")
                if forgotten[0] == generation and fetched > folded_position(tp.partition):
                    progress[tp.partition] = fetched
                    dirty_progress[tp.partition] = fetched
            except Exception as error:
                crash(error, topic=tp.topic, partition=tp.partition, during="catch-up")

    @app.timer(interval=FLUSH_S)  # type: ignore[untyped-decorator]
    async def flush_when_quiet() -> None:
        # The last trades of a burst: nothing else would flush them until the next trade. Not
        # during a rebalance: what is unflushed then may belong to partitions moving elsewhere.
        if app.rebalancing or not recovery.completed.is_set():
            return
        if time.monotonic() - flushed_at[0] >= FLUSH_S:
            await flush()

    if config.idle_exit_s is not None:
        idle = config.idle_exit_s

        @app.timer(interval=0.5)  # type: ignore[untyped-decorator]
        async def idle_check() -> None:
            # The idle clock runs only while every assigned trades partition is fetched to its end
            # and folded up to where it is fetched (see catch_up_when_quiet).
            ready = not app.rebalancing and recovery.completed.is_set()
            tps = [tp for tp in app.consumer.assignment() if tp.topic == trades.get_topic_name()] if ready else []
            for tp in tps:
                high, position = app.consumer.highwater(tp), await app.consumer.position(tp)
                if high is None or position is None or position < high or folded_position(tp.partition) < position:
                    ready = False
            if not ready or not tps:
                stats.last_event = time.monotonic()
                return
            if time.monotonic() - stats.last_event > idle:
                log.info("idle, stopping", trades=stats.trades, skipped=stats.skipped, published=stats.published)
                os.kill(os.getpid(), signal.SIGTERM)

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def report() -> None:
        log.info("progress", trades=stats.trades, skipped=stats.skipped, published=stats.published)

    @app.task  # type: ignore[untyped-decorator]
    async def started() -> None:
        await asyncio.sleep(0)
        log.info("marketdata started", app_id=config.app_id)

    return app, stats


def run(config: MarketDataConfig) -> Stats:
    """Run the worker until SIGTERM/SIGINT (or ``idle_exit_s`` without trades)."""
    app, stats = build_app(config)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    return stats
