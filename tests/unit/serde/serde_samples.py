"""Realistic topic values, in the dict shape the codec reads and writes (shared by tests and bench)."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

NS = "xchg.v1."
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


def h32(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def command(
    body_name: str, body: dict[str, Any], *, market: str = "BTC-USD", cid: str = "c-1"
) -> dict[str, Any]:
    return {"command_id": cid, "market": market, "body": (NS + body_name, body)}


def event(seq: int, body_name: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "market": "BTC-USD",
        "seq": seq,
        "ts": T0 + 5,
        "command_id": "c-42",
        "input_partition": 3,
        "input_offset": 1_000_041,
        "body": (NS + body_name, body),
    }


PLACE = command(
    "PlaceOrder",
    {
        "order_id": "o-1001",
        "account": "acct-alice",
        "side": "buy",
        "order_type": "limit",
        "price": 9_712_350,  # 97 123.50 USD at 2 price decimals
        "qty": 25_000_000,  # 0.25 BTC at 8 qty decimals
        "tif": "GTC",
        "post_only": False,
        "stp": "expire_maker",
    },
)

COMMANDS: list[dict[str, Any]] = [
    PLACE,
    command(
        "PlaceOrder",
        {
            "order_id": "o-1002",
            "account": "acct-bob",
            "side": "sell",
            "order_type": "market",
            "price": 0,
            "qty": 100_000_000,
            "tif": "IOC",
            "post_only": False,
            "stp": "none",
        },
        cid="c-2",
    ),
    command("CancelOrder", {"order_id": "o-1001", "account": "acct-alice"}, cid="c-3"),
    command("AmendOrder", {"order_id": "o-1001", "account": "acct-alice", "qty": 10_000_000, "price": None}),
    command("AmendOrder", {"order_id": "o-1001", "account": "acct-alice", "qty": None, "price": 9_700_000}),
    command("CancelAll", {"account": "acct-alice"}, cid="c-5"),
    command("SetMarketState", {"state": "halted"}, market="*", cid="admin-1"),
    command("SetMarketState", {"state": "post_only"}, cid="admin-2"),
]

TRADE_EXECUTED = event(
    12,
    "TradeExecuted",
    {
        "trade_id": 7,
        "price": 9_712_350,
        "qty": 5_000_000,
        "maker_order_id": "o-1001",
        "maker_account": "acct-alice",
        "taker_order_id": "o-1002",
        "taker_account": "acct-bob",
        "taker_side": "sell",
    },
)

EVENTS: list[dict[str, Any]] = [
    event(
        10,
        "OrderAccepted",
        {
            "order_id": "o-1002",
            "account": "acct-bob",
            "side": "sell",
            "order_type": "market",
            "price": 0,
            "qty": 100_000_000,
            "tif": "IOC",
            "post_only": False,
            "stp": "none",
        },
    ),
    event(11, "OrderRejected", {"order_id": "o-9", "account": "acct-eve", "reason": "invalid_tick"}),
    TRADE_EXECUTED,
    event(13, "OrderFilled", {"order_id": "o-1001", "account": "acct-alice"}),
    event(
        14,
        "OrderAmended",
        {"order_id": "o-7", "account": "acct-carol", "price": 9_700_000, "qty": 1, "requeued": True},
    ),
    event(
        15,
        "OrderCancelled",
        {"order_id": "o-8", "account": "acct-carol", "qty": 3_000_000, "reason": "cancel_all"},
    ),
    event(
        16,
        "OrderExpired",
        {
            "order_id": "o-1002",
            "account": "acct-bob",
            "qty": 95_000_000,
            "remaining": 0,
            "reason": "market_remainder",
        },
    ),
    event(17, "CancelAllDone", {"account": "acct-carol", "count": 1}),
    event(18, "MarketStateChanged", {"state": "halted"}),
]

TRADE: dict[str, Any] = {
    "market": "BTC-USD",
    "trade_id": 7,
    "seq": 12,
    "ts": T0 + 5,
    "price": 9_712_350,
    "qty": 5_000_000,
    "maker_order_id": "o-1001",
    "maker_account": "acct-alice",
    "taker_order_id": "o-1002",
    "taker_account": "acct-bob",
    "taker_side": "sell",
    "command_id": "c-42",
    "input_partition": 3,
    "input_offset": 1_000_041,
}

BOOK_DELTA: dict[str, Any] = {
    "market": "BTC-USD",
    "book_seq": 16,
    "prev_book_seq": 12,
    "snapshot": False,
    "seq": 16,
    "ts": T0 + 5,
    "input_partition": 3,
    "input_offset": 1_000_041,
    "changes": [
        {"side": "buy", "price": 9_712_350, "qty": 0},
        {"side": "buy", "price": 9_712_300, "qty": 40_000_000},
    ],
    "part": 0,
    "parts": 1,
}

CANDLE: dict[str, Any] = {
    "market": "BTC-USD",
    "interval": "1m",
    "window_start": T0,
    "open": 9_712_350,
    "high": 9_713_000,
    "low": 9_700_000,
    "close": 9_712_350,
    "volume": 1_250_000_000,
    # 12.5 BTC around 97k USD in price units x qty units: beyond 2^63 for a busy day, hence decimal.
    "quote_volume": Decimal(9_712_000) * Decimal(1_250_000_000),
    "trade_count": 412,
    "first_trade_id": 7,
    "last_trade_id": 418,
    "final": True,
}

TICKER: dict[str, Any] = {
    "market": "BTC-USD",
    "best_bid": 9_712_300,
    "bid_qty": 42_000_000,
    "best_ask": 9_712_400,
    "ask_qty": 1_500_000,
    "book_seq": 88_421,
    "last_price": 9_712_350,
    "last_qty": 2_000_000,
    "last_trade_id": 418,
    "window_start": T0 - 1439 * 60_000,
    "open_24h": 9_500_000,
    "high_24h": 9_800_000,
    "low_24h": 9_400_000,
    "change_24h": 212_350,
    "volume_24h": 30_000_000_000_000,
    "quote_volume_24h": Decimal(9_600_000) * Decimal(30_000_000_000_000),
    "trade_count_24h": 91_000,
    "ts": T0 + 1_500,
}

TICKER_EMPTY: dict[str, Any] = {
    **TICKER, "best_bid": None, "bid_qty": None, "best_ask": None, "ask_qty": None, "book_seq": 0,
    "last_price": None, "last_qty": None, "last_trade_id": 0, "window_start": None, "open_24h": None,
    "high_24h": None, "low_24h": None, "change_24h": None, "volume_24h": 0, "quote_volume_24h": Decimal(0),
    "trade_count_24h": 0, "ts": 0,
}

SNAPSHOT: dict[str, Any] = {
    "partition": 3,
    "next_offset": 1_000_042,
    "commands": 1_000_042,
    "markets": [
        {
            "market": "BTC-USD",
            "seq": 18,
            "trade_id": 7,
            "state_hash": h32("btc").hex(),
            "state": b"\x01book...",
        },
        {"market": "ETH-USD", "seq": 0, "trade_id": 0, "state_hash": h32("eth").hex(), "state": b""},
    ],
    "state_hash": h32("partition-3").hex(),
}

STATE_HASH: dict[str, Any] = {
    "market": "BTC-USD",
    "seq": 18,
    "input_offset": 1_000_041,
    "state_hash": h32("btc").hex(),
}

BATCH: dict[str, Any] = {
    "market": "BTC-USD",
    "batch_seq": 4,
    "first_trade_id": 3001,
    "last_trade_id": 4000,
    "trade_count": 1000,
    "prev_batch_hash": h32("batch-3"),
    "merkle_root": h32("root-4"),
    "batch_hash": h32("batch-4"),
    "close_reason": "size",
    "event_ts": T0 + 60_000,
    "deltas": [
        # 18-decimal tokens: 1.5 BTC-token and 145 680.75 USD-token (both exact integers).
        {"account": "acct-alice", "asset": "BTC", "amount": Decimal(1_500_000_000_000_000_000)},
        {"account": "acct-alice", "asset": "USD", "amount": Decimal(-145_680_750_000_000_000_000_000)},
        {"account": "acct-bob", "asset": "BTC", "amount": Decimal(-1_500_000_000_000_000_000)},
        {"account": "acct-bob", "asset": "USD", "amount": Decimal(145_535_069_250_000_000_000_000)},
        {"account": "fees", "asset": "USD", "amount": Decimal(145_680_750_000_000_000_000)},
        # The widest amount precision 38 allows.
        {"account": "whale", "asset": "X", "amount": Decimal(10**38 - 1)},
        {"account": "whale", "asset": "Y", "amount": Decimal(-(10**38 - 1))},
    ],
}

STATUS_BUILT: dict[str, Any] = {
    "market": "BTC-USD",
    "batch_seq": 4,
    "state": "BUILT",
    "tx_hash": None,
    "nonce": None,
    "block_number": None,
    "block_hash": None,
    "gas_used": None,
    "max_fee_per_gas": None,
    "bumps": 0,
    "reason": None,
    "ts": T0 + 61_000,
}

STATUS_INCLUDED: dict[str, Any] = {
    "market": "BTC-USD",
    "batch_seq": 4,
    "state": "INCLUDED",
    "tx_hash": h32("tx"),
    "nonce": 41,
    "block_number": 19_000_123,
    "block_hash": h32("block"),
    "gas_used": 1_234_567,
    "max_fee_per_gas": Decimal(31_500_000_000),
    "bumps": 1,
    "reason": "replaced after 3 blocks at 28 gwei",
    "ts": T0 + 75_000,
}

# topic -> realistic values (every body of every union at least once)
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "orders.commands": COMMANDS,
    "orders.events": EVENTS,
    "trades": [TRADE],
    "md.book": [BOOK_DELTA, {**BOOK_DELTA, "prev_book_seq": 0, "snapshot": True, "changes": []}],
    "md.candles": [CANDLE, {**CANDLE, "interval": "1d", "quote_volume": Decimal(0), "final": False}],
    "md.ticker": [TICKER, TICKER_EMPTY, {**TICKER, "change_24h": -100_000, "best_ask": None, "ask_qty": None}],
    "engine.snapshots": [SNAPSHOT, {**SNAPSHOT, "markets": []}],
    "engine.hashes": [STATE_HASH],
    "settlement.batches": [BATCH],
    "settlement.status": [STATUS_BUILT, STATUS_INCLUDED],
}
