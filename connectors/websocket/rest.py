"""The REST polling fallback (``docs/websocket-protocol.md`` §7): pure request → (status, body).

The server calls :func:`answer` from the WebSocket handshake hook for every plain HTTP GET that
is not the WebSocket path; it never raises for a bad request (400/404/503 with a JSON error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from connectors.websocket.marketstate import MarketState

MAX_DEPTH = 1000
MAX_TRADES = 1000


@dataclass(frozen=True)
class MarketInfo:
    market: str
    base: str
    quote: str
    price_decimals: int
    qty_decimals: int
    tick: int
    lot: int


Body = dict[str, Any]


def _error(status: int, code: str, message: str) -> tuple[int, Body]:
    return status, {"code": code, "message": message}


def _int(query: dict[str, list[str]], name: str, default: int | None, low: int, high: int) -> int | None:
    values = query.get(name)
    if not values:
        return default
    text = values[-1]
    if not (text.isdigit() or (text.startswith("-") and text[1:].isdigit())):
        raise ValueError(f"{name} must be an integer")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low}..{high}")
    return value


def answer(state: MarketState, markets: dict[str, MarketInfo], target: str, worker: int) -> tuple[int, Body]:
    split = urlsplit(target)
    path, query = split.path.rstrip("/") or "/", parse_qs(split.query)
    parts = path.strip("/").split("/")
    try:
        if path == "/healthz":
            return 200, {"status": "ok", "worker": worker}
        if path == "/readyz":
            unsynced = state.unsynced_markets()
            behind = sorted({"md.book", "trades", "md.candles", "orders.events"} - state.caught_up)
            ready = not unsynced and not behind
            return (200 if ready else 503), {"ready": ready, "worker": worker, "unsynced_markets": unsynced,
                                             "topics_behind": behind}
        if parts[:1] != ["v1"] or len(parts) < 2:
            return _error(404, "not_found", f"no such path {path[:80]!r}")
        resource = parts[1]
        if resource == "markets" and len(parts) == 2:
            return 200, {"markets": [_market(state, info) for info in markets.values()]}
        if resource == "ticker" and len(parts) == 2:
            wanted = query.get("market")
            if wanted:
                market = wanted[-1]
                if market not in markets:
                    return _error(404, "unknown_market", f"unknown market {market[:40]!r}")
                why = state.ready("ticker", market)
                if why:
                    return _error(503, "not_ready", why)
                return 200, {"tickers": [state.ticker(market)]}
            return 200, {"tickers": [state.ticker(m) for m in markets if state.ready("ticker", m) is None]}
        if resource in ("book", "trades", "candles") and len(parts) == 3:
            market = parts[2]
            if market not in markets:
                return _error(404, "unknown_market", f"unknown market {market[:40]!r}")
            channel = "trades" if resource == "trades" else resource
            why = state.ready(channel, market)
            if why:
                return _error(503, "not_ready", why)
            if resource == "book":
                depth = _int(query, "depth", None, 1, MAX_DEPTH)
                body = state.book_snapshot(market, depth)
                return 200, {k: v for k, v in body.items() if k not in ("type", "snapshot")}
            if resource == "trades":
                since = _int(query, "since_trade_id", 0, 0, 2**63 - 1) or 0
                limit = _int(query, "limit", MAX_TRADES, 1, MAX_TRADES) or MAX_TRADES
                return 200, {"market": market, "trades": state.trades_since(market, since, limit)}
            interval = (query.get("interval") or [""])[-1]
            if interval not in ("1m", "1h", "1d"):
                return _error(400, "invalid_interval", "interval must be one of 1m, 1h, 1d")
            start = _int(query, "start", 0, 0, 2**63 - 1) or 0
            end = _int(query, "end", 2**63 - 1, 0, 2**63 - 1)
            assert end is not None
            return 200, {"market": market, "interval": interval,
                         "candles": state.candles_between(market, interval, start, end)}
        return _error(404, "not_found", f"no such path {path[:80]!r}")
    except ValueError as error:
        return _error(400, "invalid_parameter", str(error))


def _market(state: MarketState, info: MarketInfo) -> Body:
    book = state.books[info.market]
    return {"market": info.market, "base": info.base, "quote": info.quote, "price_decimals": info.price_decimals,
            "qty_decimals": info.qty_decimals, "tick": info.tick, "lot": info.lot,
            "ready": state.ready("book", info.market) is None, "state": state.status[info.market].state,
            "book_seq": book.book_seq}
