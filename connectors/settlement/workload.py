"""Seeded synthetic trade logs for the settlement bench and tests (engine-shaped ``Trade`` records)."""

from __future__ import annotations

import random
from typing import Any


def synthetic_trades(market: str, count: int, accounts: int = 20, seed: int = 7, start_ts: int = 1_767_225_600_000,
                     step_ms: int = 5, first_trade_id: int = 1) -> list[dict[str, Any]]:
    """``count`` trades of ``market`` among ``accounts`` accounts (``acct000``...), BTC-USD-like units
    (price ≈ 60,000.00 with 2 decimals, qty 0.0001..0.05 with 6 decimals)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        maker = rng.randrange(accounts)
        taker = (maker + 1 + rng.randrange(accounts - 1)) % accounts
        trade_id = first_trade_id + i
        out.append({
            "market": market, "trade_id": trade_id, "seq": 2 * trade_id, "ts": start_ts + i * step_ms,
            "price": 6_000_000 + rng.randrange(-50_000, 50_000), "qty": 100 * rng.randrange(1, 500),
            "maker_order_id": f"m{trade_id}", "maker_account": f"acct{maker:03d}",
            "taker_order_id": f"t{trade_id}", "taker_account": f"acct{taker:03d}",
            "taker_side": rng.choice(["buy", "sell"]), "command_id": f"c{trade_id}",
            "input_partition": 0, "input_offset": trade_id,
        })
    return out
