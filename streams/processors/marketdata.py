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
  app id carries the namespace prefix). Per trade the processor (1) publishes the candle updates
  and waits for the broker's acknowledgement, (2) sends the new state to the changelog, and faust
  (3) commits the input offset later, after flushing its producer. After a crash, therefore,
  committed offset <= changelog <= published candles: the re-read trades with
  ``trade_id <= last`` are skipped (no double counting; their candles are already published), the
  rest are folded again from the recovered state and re-published (the same candles: a repeat,
  which consumers upsert by (market, interval, window_start)). Nothing is lost or counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import faust

from streams.observability import get_logger
from streams.processors.candles import fold, new_state, to_record
from streams.runtime.namespace import Namespace
from streams.serde.codec import Codec, DecodeError
from streams.serde.topics import MD_CANDLES, TRADES


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

    @property
    def app_id(self) -> str:
        return f"{self.namespace.prefix}xchg-marketdata"


@dataclass
class Stats:
    trades: int = 0
    skipped: int = 0
    published: int = 0
    undecodable: int = 0
    gaps: int = 0
    refetched: int = 0
    last_event: float = 0.0
    started: float = 0.0
    first_trade: float = 0.0


def read_trades(config: MarketDataConfig, codec: Codec, topic: str, partition: int, start: int,
                end: int) -> list[dict[str, Any]]:
    """The decodable trades at offsets ``start <= offset < end`` of one partition (committed ones)."""
    from streams.runtime.reader import read_range, standalone_consumer

    consumer = standalone_consumer(config.bootstrap)
    found: list[dict[str, Any]] = []
    try:
        for message in read_range(consumer, topic, partition, start, end):
            try:
                found.append(codec.decode(TRADES, message.value()))
            except DecodeError:
                continue
    finally:
        consumer.close()
    return found


def build_app(config: MarketDataConfig) -> tuple[faust.App, Stats]:
    log = get_logger("marketdata")
    codec = Codec(schema_registry_url=config.schema_registry_url)
    stats = Stats(started=time.monotonic(), last_event=time.monotonic())
    app = faust.App(
        config.app_id,
        broker=f"kafka://{config.bootstrap.split(',')[0]}",
        store="memory://",
        topic_partitions=config.partitions,
        topic_replication_factor=1,
        broker_commit_interval=config.commit_interval_s,
        broker_session_timeout=config.session_timeout_s,
        broker_heartbeat_interval=1.0,
        consumer_group_instance_id=config.instance_id,
        stream_recovery_delay=0.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        producer_acks=-1,
        producer_linger=0.0,
        table_standby_replicas=0,
        key_serializer="raw",
        value_serializer="raw",
    )
    trades = app.topic(config.namespace(TRADES), key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw", partitions=config.partitions)
    candles = app.topic(config.namespace(MD_CANDLES), key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw", partitions=config.partitions)
    table = app.Table("candles", default=None, partitions=config.partitions, key_type=bytes, value_type=bytes)
    changelog = table.changelog_topic
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    cache: dict[bytes, tuple[bytes, dict[str, Any]]] = {}

    async def publish(key: bytes, updates: list[dict[str, Any]]) -> None:
        """Publish and wait until the broker has every update (see the module doc: ordering)."""
        pending = [await candles.send(key=key, value=codec.encode(MD_CANDLES, to_record(candle)))
                   for candle in updates]
        await asyncio.gather(*pending)
        stats.published += len(updates)

    progress: dict[int, int] = {}  # partition -> next input offset folded (also in the table)

    async def apply(trade: dict[str, Any], partition: int) -> None:
        """Fold one trade: publish its candle updates (acknowledged), then store the state."""
        market = trade["market"]
        key = market.encode()
        stored = table.get(key)
        cached = cache.get(key)
        if stored is None:
            state = new_state()
        elif cached is not None and cached[0] is stored:
            state = cached[1]  # the table still holds what this worker wrote: skip parsing it
        else:
            state = json.loads(stored)
        if trade["trade_id"] > state["last"] + 1:
            # Trade ids are gap-free per market: the state lacks trades before this one.
            stats.gaps += 1
            log.error("trade ids skip in the input", market=market, expected=state["last"] + 1,
                      got=trade["trade_id"])
        updates = fold(state, trade)
        if not updates:
            stats.skipped += 1  # already folded before a restart; its candles were published then
            return
        # Candles first, acknowledged; then the state. The changelog record is sent here rather
        # than through ``table[key] = ...``, which queues it in faust's send_soon buffer (whose
        # flush gives up after 0.1 s).
        await publish(key, updates)
        encoded = json.dumps(state, separators=(",", ":")).encode()
        table.data[key] = encoded
        await changelog.send(key=key, value=encoded, partition=partition)
        cache[key] = (encoded, state)
        stats.trades += 1

    @app.agent(trades)
    async def process(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            stats.last_event = time.monotonic()
            if not stats.first_trade:
                stats.first_trade = stats.last_event
            if not recovery.completed.is_set():
                # Never read the table before faust has restored it from the changelog.
                await recovery.completed.wait()
                cache.clear()
                progress.clear()
            topic, partition, offset = event.message.topic, event.message.partition, event.message.offset
            progress_key = f"__progress__:{partition}".encode()
            expected = progress.get(partition)
            if expected is None:
                stored = table.get(progress_key)
                expected = int(stored) if stored else None
            if expected is not None and offset > expected:
                # The input position passed records this processor never folded (faust can commit
                # offsets ahead of processing around a crash): fold them from the topic first.
                skipped = read_trades(config, codec, topic, partition, expected, offset)
                stats.refetched += len(skipped)
                log.warning("input records skipped by the consumer: folded from the topic", partition=partition,
                            expected=expected, got=offset, records=len(skipped))
                for earlier in skipped:
                    await apply(earlier, partition)
            try:
                trade = codec.decode(TRADES, event.value)
            except DecodeError as error:
                stats.undecodable += 1
                log.warning("undecodable trade skipped", reason=error.reason, offset=offset)
            else:
                await apply(trade, partition)
            if expected is None or offset + 1 > expected:
                progress[partition] = offset + 1
                table.data[progress_key] = str(offset + 1).encode()
                await changelog.send(key=progress_key, value=table.data[progress_key], partition=partition)

    if config.idle_exit_s is not None:
        idle = config.idle_exit_s

        @app.timer(interval=0.5)  # type: ignore[untyped-decorator]
        async def idle_check() -> None:
            # The idle clock runs only while every assigned trades partition is fetched to its end.
            ready = not app.rebalancing and recovery.completed.is_set()
            tps = [tp for tp in app.consumer.assignment() if tp.topic == trades.get_topic_name()] if ready else []
            for tp in tps:
                high, position = app.consumer.highwater(tp), await app.consumer.position(tp)
                if high is None or position is None or position < high:
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
