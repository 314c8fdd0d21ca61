"""The client library against real faults: a SIGKILLed gateway worker (restarted by the
supervisor), dropped client connections, a corrupted delta (checksum mismatch), a silent
connection, and an engine restart (its snapshot), all while the engine processes a seeded flow.

After every fault each affected client is back on a live book, and when the round's flow is
processed every client's book equals the engine's at the same book_seq (an offline replay of
the input). The fault-to-correct-book time is measured for every affected client; its p99 must
be under 5 s. Trades: each client saw a contiguous run of trade ids ending at the engine's last,
each once, across all the reconnects.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Union

import pytest

from connectors.websocket.client import Resync
from streams.serde.codec import Codec
from tests.pipeline import offline_events
from tests.websocket.client_harness import Follower, percentile, until
from tests.websocket.conftest import Pipeline
from tests.websocket.gateway import PARTITIONS, GatewayProcess, engine_books

pytestmark = [pytest.mark.integration, pytest.mark.crash]
MARKETS = ("BTC-USD", "ETH-USD")
FOLLOWERS = 8
RECOVERY_P99_S = 5.0
Fault = Union[dict[Follower, float], float]  # noqa: UP007 - a runtime alias


def last_trade_ids(pipeline: Pipeline) -> dict[str, int]:
    """The engine's last trade id per market (trade ids are 1.. gap-free per market)."""
    last: dict[str, int] = {}
    for partition in range(PARTITIONS):
        events, _ = offline_events(pipeline.bootstrap, pipeline.ns, partition, Codec())
        for event in events:
            if event["body"][0] == "xchg.v1.TradeExecuted":
                last[event["market"]] = max(last.get(event["market"], 0), event["body"][1]["trade_id"])
    return last


class Rounds:
    def __init__(self, pipeline: Pipeline, gateway: GatewayProcess, followers: list[Follower]) -> None:
        self.pipeline, self.gateway, self.followers = pipeline, gateway, followers
        self.recoveries: dict[str, list[float]] = {}

    async def all_live(self, timeout: float = 30) -> None:
        await until(lambda: all(f.live for f in self.followers) or self.failed(), timeout, "every client live")
        assert not self.failed(), self.failed()

    def failed(self) -> str:
        return "; ".join(f"{f.market}: {f.error!r}" for f in self.followers if f.error is not None)

    async def round(self, name: str, fault: Callable[[], Awaitable[Fault]], commands: int = 800,
                    measured: bool = True) -> None:
        """Feed ``commands`` in the background, inject ``fault`` mid-stream (after every client saw
        book updates of this round), then check the recovery and the books against the engine.
        ``fault`` returns the fault time of each client it hit, or one time for all: then the
        affected clients are those that reported a loss since."""
        counts = {f: len(f.updates) for f in self.followers}
        feeder = asyncio.create_task(asyncio.to_thread(self.pipeline.produce, commands, 600.0))
        await until(lambda: all(len(f.updates) > counts[f] + 3 for f in self.followers), 60,
                    f"{name}: book updates flowing before the fault")
        hit = await fault()
        await feeder
        await asyncio.to_thread(self.pipeline.wait_processed)
        books = await asyncio.to_thread(engine_books, self.pipeline.bootstrap, self.pipeline.ns)
        for follower in self.followers:
            want = books[follower.market]
            await until(lambda f=follower, w=want: f.live and f.book is not None and f.book.book_seq >= w.book_seq,  # type: ignore[misc]
                        30, f"{name}: {follower.market} client to reach book_seq {want.book_seq}")
            assert follower.book_equals(want), (
                f"{name}: {follower.market} client's book differs from the engine's at book_seq {want.book_seq}")
        affected = hit if isinstance(hit, dict) else {f: hit for f in self.followers if f.losses_since(hit)}
        assert affected, f"{name}: the fault affected no client"
        samples = []
        for follower, fault_at in affected.items():
            recovered = follower.recovered_at(fault_at)
            assert recovered is not None, f"{name}: a {follower.market} client reported no recovery"
            samples.append(recovered - fault_at)
        if measured:
            self.recoveries.setdefault(name, []).extend(samples)
        assert not self.failed(), self.failed()


def test_clients_recover_a_correct_book_after_every_fault(pipeline: Pipeline) -> None:
    pipeline.produce(1500)
    pipeline.wait_processed()
    gateway = pipeline.gateway(workers=2).start()
    gateway.wait_ready()
    rng = random.Random(15)

    async def scenario() -> None:
        followers = [Follower(f"http://127.0.0.1:{gateway.port}", MARKETS[i % len(MARKETS)]).start()
                     for i in range(FOLLOWERS)]
        rounds = Rounds(pipeline, gateway, followers)
        try:
            await rounds.all_live()

            def kill_worker(pid: int) -> Callable[[], Awaitable[Fault]]:
                async def fault() -> Fault:
                    at = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
                    await until(lambda: any(f.losses_since(at) for f in followers), 10, "a client to lose its worker")
                    return at
                return fault

            original = sorted(gateway.worker_pids())
            assert len(original) == 2
            for pid in original:
                await rounds.round(f"sigkill worker {pid}", kill_worker(pid))
                await until(lambda p=pid: len(gateway.worker_pids()) == 2 and p not in gateway.worker_pids(), 60,  # type: ignore[misc]
                            "the supervisor to start the killed worker again")
                await rounds.all_live()

            async def drop_random() -> Fault:
                chosen = rng.sample(followers, FOLLOWERS // 2)
                out = {}
                for follower in chosen:
                    out[follower] = time.monotonic()
                    assert follower.client.abort_connection() == 1
                return out

            for _ in range(3):
                await rounds.round("drop random connections", drop_random)

            async def corrupt() -> Fault:
                chosen = rng.sample(followers, 3)
                for follower in chosen:
                    follower.corrupt_next_delta = True
                await until(lambda: all(f.corrupted_at for f in chosen), 30, "a delta to be corrupted")
                return {f: f.corrupted_at for f in chosen if f.corrupted_at is not None}

            await rounds.round("corrupt one delta", corrupt)
            resyncs = [u for f in followers for _, u in f.updates if isinstance(u, Resync)]
            assert any(r.reason == "checksum_mismatch" for r in resyncs), "the corrupted delta was not detected"

            async def silence() -> Fault:
                follower = followers[0]
                at = time.monotonic()
                follower.silent = True
                await until(lambda: follower.losses_since(at), 10, "the silent connection to be detected")
                detected = follower.losses_since(at)[0] - at
                assert detected < follower.options.heartbeat_timeout_s + 1.5, f"silence detected after {detected:.1f}s"
                return {follower: at}

            await rounds.round("silent connection", silence, measured=False)

            # The engine restart is not a client loss: its snapshot replaces the books in stream.
            at = time.monotonic()
            snapshots = {f: sum(1 for _, u in f.updates if getattr(u, "snapshot", False)) for f in followers}
            pipeline.engine.signal(signal.SIGTERM)
            await asyncio.to_thread(pipeline.engine.proc.wait, 60)  # type: ignore[union-attr]
            pipeline.engine.start()
            await asyncio.to_thread(pipeline.produce, 800, 600.0)  # the engine publishes its snapshot as it resumes
            await asyncio.to_thread(pipeline.wait_processed)
            await until(lambda: all(sum(1 for _, u in f.updates if getattr(u, "snapshot", False)) > snapshots[f]
                                    for f in followers), 60, "the engine restart's snapshot to reach every client")
            books = await asyncio.to_thread(engine_books, pipeline.bootstrap, pipeline.ns)
            for follower in followers:
                want = books[follower.market]
                await until(lambda f=follower, w=want: f.book is not None and f.book.book_seq >= w.book_seq,  # type: ignore[misc]
                            30, f"engine restart: {follower.market} client to reach {want.book_seq}")
                assert follower.book_equals(want), f"engine restart: {follower.market} book differs"
            assert not any(f.losses_since(at) for f in followers), "the engine restart cost a client its stream"

            last = await asyncio.to_thread(last_trade_ids, pipeline)
            for follower in followers:
                ids = follower.trades
                assert ids, f"{follower.market}: no trade delivered"
                assert ids == list(range(ids[0], ids[0] + len(ids))), (
                    f"{follower.market}: trade ids not contiguous and unique across reconnects")
                assert ids[-1] == last[follower.market]

            samples = [s for values in rounds.recoveries.values() for s in values]
            p99 = percentile(samples, 0.99)
            print(f"\nreconnect-to-correct-book: {len(samples)} samples, p50 {percentile(samples, 0.5):.3f}s, "
                  f"p99 {p99:.3f}s, max {max(samples):.3f}s; per fault: "
                  + ", ".join(f"{k}: {max(v):.3f}s max of {len(v)}" for k, v in rounds.recoveries.items()))
            assert len(samples) >= 10
            assert p99 < RECOVERY_P99_S, f"p99 reconnect-to-correct-book {p99:.2f}s >= {RECOVERY_P99_S}s"
        finally:
            for follower in followers:
                await follower.stop()

    asyncio.run(scenario())
