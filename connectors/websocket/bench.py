"""Loopback comparison of the two candidate WebSocket libraries (``websockets`` and ``picows``):
one server process sends ``frames`` frames of ~100 bytes to each of ``clients`` connections,
either one send per frame or all of a tick's frames coalesced into one write; the clients run in
another process (``websockets`` client) and the server reports frames delivered per second.

Run: ``.venv/bin/python -m connectors.websocket.bench [clients] [frames]``; prints one JSON line.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import sys
import time
from typing import Any

import orjson

FRAME = orjson.dumps({"type": "trade", "market": "BTC-USD", "trade_id": 123456, "price": 10012345,
                      "qty": 2500, "side": "buy", "seq": 4821133, "ts": 1767225600000})
TICK_FRAMES = 20  # frames per client per tick in the coalesced mode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _clients(port: int, clients: int, frames: int) -> None:
    from websockets.asyncio.client import connect

    async def one() -> None:
        async with connect(f"ws://127.0.0.1:{port}/", ping_interval=None, max_queue=None) as ws:
            for _ in range(frames):
                await ws.recv()

    await asyncio.gather(*(one() for _ in range(clients)))


def _client_process(port: int, clients: int, frames: int) -> None:
    asyncio.run(_clients(port, clients, frames))


async def _serve_websockets(port: int, clients: int, frames: int, coalesce: bool, listening: Any) -> float:
    from websockets.asyncio.server import serve

    from connectors.websocket.server import CoalescingConnection

    connected: list[Any] = []
    everyone = asyncio.Event()

    async def handler(ws: Any) -> None:
        connected.append(ws)
        if len(connected) == clients:
            everyone.set()
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", port, ping_interval=None, create_connection=CoalescingConnection,
                     compression=None):
        listening()
        await everyone.wait()
        start = time.perf_counter()

        async def feed(ws: Any) -> None:
            for sent in range(0, frames, TICK_FRAMES if coalesce else 1):
                if coalesce:
                    async with ws.send_context():
                        for _ in range(min(TICK_FRAMES, frames - sent)):
                            ws.protocol.send_text(FRAME)
                else:
                    await ws.send(FRAME, text=True)

        await asyncio.gather(*(feed(ws) for ws in connected))
        await asyncio.gather(*(ws.wait_closed() for ws in connected))
        return time.perf_counter() - start


async def _serve_picows(port: int, clients: int, frames: int, coalesce: bool, listening: Any) -> float:
    import picows

    connected: list[Any] = []
    everyone = asyncio.Event()
    closed = asyncio.Event()
    gone = [0]

    class Listener(picows.WSListener):
        def on_ws_connected(self, transport: Any) -> None:
            connected.append(transport)
            if len(connected) == clients:
                everyone.set()

        def on_ws_disconnected(self, transport: Any) -> None:
            gone[0] += 1
            if gone[0] == clients:
                closed.set()

    server = await picows.ws_create_server(lambda _: Listener(), "127.0.0.1", port)
    listening()
    await everyone.wait()
    start = time.perf_counter()
    for sent in range(0, frames, TICK_FRAMES if coalesce else 1):
        for transport in connected:
            if coalesce:
                n = min(TICK_FRAMES, frames - sent)
                # picows has no multi-frame write: one send per frame (its sends are synchronous
                # writes to the transport buffer, already cheap).
                for _ in range(n):
                    transport.send(picows.WSMsgType.TEXT, FRAME)
            else:
                transport.send(picows.WSMsgType.TEXT, FRAME)
        if sent % 200 == 0:
            await asyncio.sleep(0)
    await closed.wait()
    server.close()
    return time.perf_counter() - start


def measure(library: str, clients: int, frames: int, coalesce: bool) -> float:
    port = _free_port()
    process = multiprocessing.get_context("spawn").Process(target=_client_process, args=(port, clients, frames))
    serve = _serve_websockets if library == "websockets" else _serve_picows

    async def run() -> float:
        return await serve(port, clients, frames, coalesce, process.start)

    seconds = asyncio.run(run())
    process.join(60)
    return clients * frames / seconds


def main() -> None:
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    frames = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    result: dict[str, Any] = {"clients": clients, "frames_per_client": frames, "frame_bytes": len(FRAME)}
    for library in ("websockets", "picows"):
        for coalesce in (False, True):
            key = f"{library}_{'coalesced' if coalesce else 'per_frame'}_frames_per_s"
            result[key] = round(measure(library, clients, frames, coalesce))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
