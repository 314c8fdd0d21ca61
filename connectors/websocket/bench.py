"""``xchg bench ws``: fan-out of the gateway against a bare ``websockets`` server, in one run.

Prints one JSON line (``streams/cli/bench.py``). The work, for each client count (default 1,000
and 5,000), on loopback:

- **Gateway** (``xchg ws serve --workers 1`` in a fresh topic namespace, so the figures are per
  worker). ``--client-processes`` client processes (``python -m connectors.websocket.bench
  client``, the ``websockets`` client, like ``tests/websocket/fanout_client.py``) open the
  connections; each connection subscribes to the ``trades`` of one of the first four markets.
- **Throughput** (``delivered_per_s``): the bench, standing in for the engine, commits a burst of
  trade records to ``trades`` in a few transactions (``--deliveries`` frames in total over the
  clients: ``deliveries / clients`` trades per market); every frame received counts, over the span
  from the first frame any client received to the last one.
- **Latency** (``latency_ms``): then trades at a steady rate, half of the throughput just measured,
  for ``--seconds``, committed every 20 ms; a frame's latency is its receipt time minus the trade
  record's ``ts``, which the bench sets just before it commits the transaction (the time the
  engine would commit it; ms resolution). p50 / p99 over every frame received.
- **Floor** (``floor_per_s``): a bare asyncio server of the same library (``python -m
  connectors.websocket.bench floor``: ``websockets.asyncio.server.serve`` and ``broadcast()``, no
  Kafka, no queues, frames prepared in memory) broadcasts the same frames (the same trades
  encoded by the gateway's own ``protocol.trade``) to the same number of clients from the same
  kind of client processes, counted the same way. ``floor_per_s``: the frames of a burst written
  ``frames_per_write`` at a time per connection (the mean the gateway's own coalescing reached in
  its burst, from its ``xchg_ws_write_frames`` metric), the library framing each message;
  ``ratio = delivered_per_s / floor_per_s`` (target >= 0.7). ``floor_broadcast_per_s``: the
  library's ``broadcast()`` (one write per frame per connection), on a quarter of the frames.

Everything shares the machine (broker, gateway, floor, clients): a 2-core VM gives noisy figures,
which is why the floor is measured in the same run. The soft ``RLIMIT_NOFILE`` is raised up to the
hard limit (children inherit it); a hard limit too low for the largest client count stops the
bench with a message before anything starts.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

WAVE = 25  # connections opened at once per client process (the listen backlog is ~100)
TXN_RECORDS = 1000  # trade records per transaction of a burst
LATENCY_TXN_S = 0.02  # one transaction every 20 ms in the latency phase
FLOOR_YIELD_EVERY = 1  # frames per market broadcast between two returns to the floor's event loop
FD_HEADROOM = 512


def trade_record(market: str, trade_id: int, ts: int) -> dict[str, Any]:
    """The ``xchg.v1.Trade`` record of the bench's trade ``trade_id`` (deterministic but ``ts``)."""
    return {"market": market, "trade_id": trade_id, "seq": trade_id * 3, "ts": ts,
            "price": 10_000_00 + trade_id % 997, "qty": 100 * (1 + trade_id % 50),
            "maker_order_id": f"m{trade_id}", "maker_account": f"acct{trade_id % 200:03d}",
            "taker_order_id": f"t{trade_id}", "taker_account": f"acct{(trade_id * 7) % 200:03d}",
            "taker_side": "buy" if trade_id % 2 else "sell", "command_id": f"c{trade_id}",
            "input_partition": 0, "input_offset": trade_id}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- client processes ------------------------------------------------------------------------------


@dataclass
class _Tally:
    """What one client process received since the last report."""

    markets: list[str]
    counts: list[int]
    frames: int = 0
    first: float = 0.0
    last: float = 0.0
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    targets: dict[str, int] | None = None
    reached: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.counts = [0] * len(self.counts)
        self.frames, self.first, self.last = 0, 0.0, 0.0
        self.latencies = array.array("d")
        self.targets, self.reached = None, 0
        self.done.clear()

    def expect(self, targets: dict[str, int]) -> None:
        self.targets = targets
        self.reached = sum(1 for i, n in enumerate(self.counts) if n >= targets[self.markets[i]])
        if self.reached == len(self.counts):
            self.done.set()

    def got(self, index: int, now: float, ts: int) -> None:
        if not self.frames:
            self.first = now
        self.frames += 1
        self.last = now
        self.latencies.append(now * 1000 - ts)
        n = self.counts[index] = self.counts[index] + 1
        if self.targets is not None and n == self.targets[self.markets[index]]:
            self.reached += 1
            if self.reached == len(self.counts):
                self.done.set()


async def _client_main(url: str, markets: list[str], count: int) -> None:
    from websockets.asyncio.client import connect

    assigned = [markets[i % len(markets)] for i in range(count)]
    tally = _Tally(assigned, [0] * count)
    failed: list[str] = []

    async def one(index: int, subscribed: asyncio.Event) -> None:
        try:
            async with connect(url, open_timeout=60, ping_interval=None, max_queue=None,
                               compression=None) as ws:
                await ws.send(orjson.dumps({"op": "subscribe", "channel": "trades", "market": assigned[index]}))
                async for raw in ws:
                    now = time.time()
                    message = orjson.loads(raw)
                    kind = message.get("type")
                    if kind == "trade":
                        tally.got(index, now, message["ts"])
                    elif kind == "subscribed":
                        subscribed.set()
                    elif kind in ("error", "not_ready"):
                        raise RuntimeError(f"answered {message}")
        except Exception as error:  # reported in the ready line
            failed.append(f"{type(error).__name__}: {error}")
        finally:
            subscribed.set()

    tasks: list[asyncio.Task[None]] = []
    for start in range(0, count, WAVE):
        events = [asyncio.Event() for _ in range(start, min(count, start + WAVE))]
        tasks.extend(asyncio.create_task(one(start + i, e)) for i, e in enumerate(events))
        await asyncio.gather(*(e.wait() for e in events))
    _say({"ready": count - len(failed), "errors": failed[:3]})
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        command = orjson.loads(line)
        if command["op"] == "reset":
            tally.reset()
            _say({"reset": True})
        elif command["op"] == "wait":
            tally.expect(command["expect"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tally.done.wait(), command["timeout"])
            report: dict[str, Any] = {"frames": tally.frames, "first": tally.first, "last": tally.last,
                                      "complete": tally.done.is_set(), "lost": len(failed)}
            if command.get("latencies"):
                report["latencies"] = [round(x, 2) for x in tally.latencies]
            _say(report)
            tally.reset()
        else:
            break
    for task in tasks:
        task.cancel()


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


# -- the floor: a bare websockets server -----------------------------------------------------------


async def _floor_main(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed
    from websockets.protocol import State

    from connectors.websocket import protocol

    groups: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        market = None
        try:
            async for raw in ws:
                request = orjson.loads(raw)
                market = request["market"]
                groups.setdefault(market, set()).add(ws)
                await ws.send(orjson.dumps({"type": "subscribed", "id": None, "channel": "trades",
                                            "market": market}), text=True)
        except ConnectionClosed:
            pass
        finally:
            if market is not None:
                groups[market].discard(ws)

    def write(ws: ServerConnection, frames: list[bytes]) -> None:
        """The library frames each message; all of them leave in one socket write."""
        if ws.protocol.state is not State.OPEN:
            return
        for frame in frames:
            ws.protocol.send_text(frame)
        ws.transport.write(b"".join(ws.protocol.data_to_send()))

    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=64):
        _say({"listening": port})
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            command = orjson.loads(line)
            if command["op"] != "burst":
                return
            first, per_market, chunk = command["first_trade_id"], command["per_market"], command["chunk"]
            ts = now_ms()
            frames = {m: [protocol.encode(protocol.trade(trade_record(m, first + i, ts))) for i in range(per_market)]
                      for m in sorted(groups)}
            if not chunk:  # broadcast(): one frame, one write per connection
                for n, i in enumerate(range(per_market), 1):
                    for market, encoded in frames.items():
                        broadcast(groups[market], encoded[i], text=True)
                    if n % FLOOR_YIELD_EVERY == 0:
                        await asyncio.sleep(0)
            else:  # ``chunk`` frames per write per connection, like the gateway's ticks
                for start in range(0, per_market, chunk):
                    for market, encoded in frames.items():
                        part = encoded[start:start + chunk]
                        for ws in list(groups[market]):
                            write(ws, part)
                        await asyncio.sleep(0)
            _say({"sent": sum(len(f) for f in frames.values())})


# -- the orchestration -----------------------------------------------------------------------------


class ClientFleet:
    """``processes`` client processes holding ``clients`` connections to ``url`` between them."""

    def __init__(self, url: str, markets: list[str], clients: int, processes: int) -> None:
        self.markets = markets
        shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
        self.procs = [subprocess.Popen([sys.executable, "-m", "connectors.websocket.bench", "client", url,
                                        ",".join(markets), str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                      for n in shares if n]
        for proc in self.procs:
            ready = self._read(proc)
            if ready.get("ready") != shares[self.procs.index(proc)]:
                raise RuntimeError(f"a client process connected {ready}")

    @staticmethod
    def _read(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a client process exited ({proc.poll()})")
        return orjson.loads(line)  # type: ignore[no-any-return]

    def _send(self, command: dict[str, Any]) -> None:
        for proc in self.procs:
            stdin: IO[bytes] | None = proc.stdin
            assert stdin is not None
            stdin.write(orjson.dumps(command) + b"\n")
            stdin.flush()

    def reset(self) -> None:
        self._send({"op": "reset"})
        for proc in self.procs:
            self._read(proc)

    def wait(self, per_market: dict[str, int], timeout: float, latencies: bool = False) -> list[dict[str, Any]]:
        self._send({"op": "wait", "expect": per_market, "timeout": timeout, "latencies": latencies})
        return [self._read(proc) for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def delivered_rate(reports: list[dict[str, Any]]) -> tuple[int, float, bool]:
    """(frames, frames per second from the first frame any client got to the last, complete)."""
    got = [r for r in reports if r["frames"]]
    frames = sum(r["frames"] for r in got)
    if not got:
        return 0, 0.0, False
    span = max(r["last"] for r in got) - min(r["first"] for r in got)
    return frames, frames / max(span, 1e-6), all(r["complete"] for r in reports)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class TradeSource:
    """Stands in for the engine: trade records on ``trades``, committed in transactions."""

    def __init__(self, bootstrap: str, topic: str, markets: list[str]) -> None:
        from confluent_kafka import Producer

        from streams.runtime.clients import producer_config
        from streams.serde.codec import Codec
        from streams.serde.topics import TRADES

        self.topic, self.markets = topic, markets
        self.next_id = dict.fromkeys(markets, 1)
        self.producer = Producer(producer_config(bootstrap, f"{topic}-bench-ws-{uuid.uuid4().hex[:6]}",
                                                 **{"linger.ms": 1}))
        self.producer.init_transactions(30)
        codec = Codec()
        self.encode: Callable[[dict[str, Any]], bytes] = lambda r: codec.encode(TRADES, r)

    def commit(self, per_market: int) -> None:
        """``per_market`` trades of every market, interleaved, in transactions of TXN_RECORDS."""
        records: Iterator[tuple[str, int]] = ((m, i) for i in range(per_market) for m in self.markets)
        pending = 0
        self.producer.begin_transaction()
        ts = now_ms()
        for market, _ in records:
            trade_id = self.next_id[market]
            self.next_id[market] = trade_id + 1
            self.producer.produce(self.topic, self.encode(trade_record(market, trade_id, ts)), market.encode())
            pending += 1
            if pending == TXN_RECORDS:
                self.producer.commit_transaction(30)
                self.producer.begin_transaction()
                ts, pending = now_ms(), 0
        self.producer.commit_transaction(30)

    def steady(self, trades_per_s: float, seconds: float) -> dict[str, int]:
        """Trades at ``trades_per_s`` over the markets in turn, one transaction every 20 ms."""
        sent = dict.fromkeys(self.markets, 0)
        start = time.monotonic()
        owed = 0.0
        turn = 0
        while (elapsed := time.monotonic() - start) < seconds:
            owed = trades_per_s * elapsed - sum(sent.values())
            if owed >= 1:
                self.producer.begin_transaction()
                ts = now_ms()
                for _ in range(int(owed)):
                    market = self.markets[turn % len(self.markets)]
                    turn += 1
                    trade_id = self.next_id[market]
                    self.next_id[market] = trade_id + 1
                    sent[market] += 1
                    self.producer.produce(self.topic, self.encode(trade_record(market, trade_id, ts)), market.encode())
                self.producer.commit_transaction(30)
            time.sleep(max(0.0, LATENCY_TXN_S - (time.monotonic() - start - elapsed)))
        return sent


def raise_nofile(needed: int) -> dict[str, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); fail if too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise RuntimeError(f"the hard open-files limit is {hard}, the bench needs ~{needed} for its largest client "
                           f"count (the gateway holds every connection): raise it (ulimit -Hn) or use fewer --clients")
    return {"soft_before": soft, "soft": target, "hard": hard}


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(30)
        self.log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(bootstrap: str, prefix: str, log_path: str, max_clients: int) -> Gateway:
    import urllib.request

    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_WS_")},
           "EXCHANGE_KAFKA_BOOTSTRAP": bootstrap, "EXCHANGE_TOPIC_PREFIX": prefix, "EXCHANGE_WS_PORT": str(port),
           "EXCHANGE_METRICS_PORT": "0", "EXCHANGE_WS_MAX_CONNECTIONS_PER_IP": str(max_clients + 100)}
    log = open(log_path, "ab")  # noqa: SIM115 - closed by Gateway.stop
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "ws", "serve", "--workers", "1"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    gateway = Gateway(proc, port, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited ({proc.returncode}): see {log_path}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz",
                                                                   timeout=2) as answer:
            if answer.status == 200:
                return gateway
        time.sleep(0.2)
    gateway.stop()
    raise RuntimeError(f"the gateway was not ready within 90 s: see {log_path}")


def start_floor() -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "connectors.websocket.bench", "floor", str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if not proc.stdout.readline():
        raise RuntimeError("the floor server did not start")
    return proc, port


def _floor_burst(floor: subprocess.Popen[bytes], first_trade_id: int, per_market: int, chunk: int) -> None:
    """Ask the floor for a burst: ``chunk`` 0 for ``broadcast()``, else that many frames per write."""
    assert floor.stdin is not None
    floor.stdin.write(orjson.dumps({"op": "burst", "first_trade_id": first_trade_id, "per_market": per_market,
                                    "chunk": chunk}) + b"\n")
    floor.stdin.flush()


def _floor_done(floor: subprocess.Popen[bytes]) -> None:
    assert floor.stdout is not None
    if not floor.stdout.readline():
        raise RuntimeError("the floor server exited")


def write_frames(port: int) -> tuple[float, float]:
    """The gateway's ``xchg_ws_write_frames`` histogram: (frames written, socket writes) so far."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("xchg_ws_write_frames_sum", "xchg_ws_write_frames_count"):
            values[name] = float(value)
    return values.get("xchg_ws_write_frames_sum", 0.0), values.get("xchg_ws_write_frames_count", 0.0)


def measure(clients: int, *, source: TradeSource, gateway_port: int, floor: subprocess.Popen[bytes], floor_port: int,
            processes: int, deliveries: int, seconds: float, latency_load: float,
            report: Callable[[str], None]) -> dict[str, Any]:
    markets = source.markets
    per_market = max(20, deliveries // clients)
    expect = dict.fromkeys(markets, per_market)
    timeout = 20 + deliveries / 20_000  # a generous deadline: an incomplete run says so

    report(f"{clients} clients: connecting to the gateway")
    started = time.monotonic()
    fleet = ClientFleet(f"ws://127.0.0.1:{gateway_port}/v1/ws", markets, clients, processes)
    report(f"{clients} clients: connected in {time.monotonic() - started:.1f} s")
    try:
        source.commit(2)  # warm-up: every subscription path live
        fleet.wait(dict.fromkeys(markets, 2), 30)
        fleet.reset()
        frames_before, writes_before = write_frames(gateway_port)
        source.commit(per_market)
        frames, delivered, complete = delivered_rate(fleet.wait(expect, timeout))
        frames_after, writes_after = write_frames(gateway_port)
        per_write = (frames_after - frames_before) / max(1.0, writes_after - writes_before)
        report(f"{clients} clients: gateway delivered {frames} frames, {delivered:,.0f}/s, "
               f"{per_write:.1f} frames per write")
        rate = max(1.0, latency_load * delivered * len(markets) / clients)  # trades/s
        sent = source.steady(rate, seconds)
        reports = fleet.wait(sent, 30, latencies=True)
        latencies = sorted(x for r in reports for x in r["latencies"])
        lost = max(r["lost"] for r in reports)
        report(f"{clients} clients: latency p50 {percentile(latencies, 0.5):.1f} ms, "
               f"p99 {percentile(latencies, 0.99):.1f} ms at {rate:.0f} trades/s")
    finally:
        fleet.close()
    report(f"{clients} clients: connecting to the floor")
    fleet = ClientFleet(f"ws://127.0.0.1:{floor_port}/", markets, clients, processes)
    floors: dict[str, tuple[int, float, bool]] = {}
    try:
        _floor_burst(floor, 1, 2, 0)
        fleet.wait(dict.fromkeys(markets, 2), 30)
        _floor_done(floor)
        fleet.reset()
        # The coalesced floor first: broadcast() is much slower, so it gets a quarter of the
        # frames, and any it did not deliver by the deadline cannot spill into another burst.
        chunk, small = max(1, round(per_write)), max(20, per_market // 4)
        for name, first, count, mode in (("coalesced", 3, per_market, chunk), ("broadcast", 3 + per_market, small, 0)):
            _floor_burst(floor, first, count, mode)
            floors[name] = delivered_rate(fleet.wait(dict.fromkeys(markets, count), timeout))
            _floor_done(floor)
            report(f"{clients} clients: floor ({name}) delivered {floors[name][0]} frames, {floors[name][1]:,.0f}/s")
    finally:
        fleet.close()
    floor_rate = floors["coalesced"][1]
    return {
        "delivered_per_s": round(delivered), "frames": frames, "complete": complete,
        "frames_per_write": round(per_write, 1),
        "floor_per_s": round(floor_rate), "floor_complete": floors["coalesced"][2],
        "ratio": round(delivered / floor_rate, 3) if floor_rate else None,
        "floor_broadcast_per_s": round(floors["broadcast"][1]), "floor_broadcast_complete": floors["broadcast"][2],
        "ratio_to_broadcast": round(delivered / floors["broadcast"][1], 3) if floors["broadcast"][1] else None,
        "trades_per_market": per_market,
        "latency_ms": {"p50": round(percentile(latencies, 0.50), 1), "p99": round(percentile(latencies, 0.99), 1),
                       "max": round(latencies[-1], 1) if latencies else None,
                       "mean": round(statistics.fmean(latencies), 1) if latencies else None,
                       "samples": len(latencies), "trades_per_s": round(rate, 1),
                       "deliveries_per_s": round(rate * clients / len(markets)), "seconds": seconds},
        "connections_lost": lost,
    }


def run(client_counts: list[int], processes: int, deliveries: int, seconds: float, latency_load: float,
        report: Callable[[str], None]) -> dict[str, Any]:
    from streams.bench.host import HostCpuSampler
    from streams.bench.pipeline import Stage
    from streams.markets import MarketRegistry
    from streams.serde.topics import TRADES
    from streams.services.kafka import KafkaCluster
    from streams.settings import load_settings

    settings = load_settings()
    nofile = raise_nofile(max(client_counts) + FD_HEADROOM)
    bootstrap = KafkaCluster(settings).bootstrap_servers()
    markets = [m.symbol for m in MarketRegistry.load(settings.markets_file)][:4]
    log_dir = settings.runtime_dir / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    stage = Stage.create(bootstrap, settings, "ws")
    host = HostCpuSampler()
    host.start()
    gateway: Gateway | None = None
    floor: subprocess.Popen[bytes] | None = None
    try:
        gateway = start_gateway(bootstrap, stage.ns.prefix, str(log_dir / f"ws-gateway-{stage.ns.prefix}log"),
                                max(client_counts))
        floor, floor_port = start_floor()
        source = TradeSource(bootstrap, stage.ns(TRADES), markets)
        results = {str(n): measure(n, source=source, gateway_port=gateway.port, floor=floor, floor_port=floor_port,
                                   processes=processes, deliveries=deliveries, seconds=seconds,
                                   latency_load=latency_load, report=report)
                   for n in client_counts}
    finally:
        host.stop()
        if floor is not None:
            with contextlib.suppress(OSError):
                assert floor.stdin is not None
                floor.stdin.close()
            try:
                floor.wait(10)
            except subprocess.TimeoutExpired:
                floor.kill()
        if gateway is not None:
            gateway.stop()
        stage.drop()
    return {"clients": client_counts, "gateway_workers": 1, "client_processes": processes, "markets": markets,
            "deliveries": deliveries, "latency_load": latency_load, "results": results, "host_cpu": host.summary(), "nofile": nofile}


def main() -> None:
    mode = sys.argv[1]
    if mode == "client":
        asyncio.run(_client_main(sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])))
    elif mode == "floor":
        asyncio.run(_floor_main(int(sys.argv[2])))
    else:
        raise SystemExit(f"usage: python -m connectors.websocket.bench client URL MARKETS N | floor PORT (got {mode})")


if __name__ == "__main__":
    main()
