"""Deterministic settlement batches from the trade log: pure, no I/O, no clock.

Invariants (property-tested in ``tests/settlement/test_batcher_properties.py``):

* **Determinism.** Batches are a function of the per-market trade sequence and the config alone:
  a replay of the same trades re-forms byte-identical batches (same ranges, roots, deltas, hashes).
* **Partition of the log.** Every trade of a market is in exactly one batch; a batch covers the
  contiguous trade-id range ``first_trade_id..last_trade_id``; batch *n+1* starts at
  ``last_trade_id(n) + 1`` and carries ``prev_batch_hash = batch_hash(n)`` (32 zero bytes first).
* **Conservation.** Per batch and asset the net deltas sum to zero; all fees go to the fee account.

Closing rules, evaluated per market as each trade arrives (event time = trade ``ts``):

1. *age*: if the open batch is non-empty and ``trade.ts - first.ts >= max_age_ms`` the open batch
   closes *before* the trade (``close_reason = age``, ``event_ts = trade.ts``);
2. *deltas*: if adding the trade would make the batch touch more than ``max_deltas`` distinct
   (account, asset) pairs, the open batch closes before it (``close_reason = size``): this keeps a
   batch's gas under the 4M budget (≈ 8.4k gas per delta);
3. *size*: after adding, a batch of ``max_trades`` trades closes (``close_reason = size``).
4. ``flush`` closes the open batches at the end of the input (demos, tests, an operator's
   end-of-day); it is recorded as ``age`` and is the one non-log-driven close: the emitted batch is
   in ``settlement.batches`` and the batcher resumes after it, so replays still agree.

Trade records and the Merkle root: leaf = ``keccak256(abi.encode(bytes32 market, uint64 trade_id,
uint64 ts, uint64 price, uint64 qty, address buyer, address seller, bool taker_is_buyer))``; the
tree hashes ``keccak256(left ‖ right)`` level by level, an odd last node is promoted unchanged.
``batch_hash`` is the contract's formula (``contracts/README.md``), so it equals the on-chain
``lastBatchHash`` after settlement: deltas are ``(account address, token address, amount)`` in the
order of the record (sorted by account id, then asset).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from eth_abi.abi import encode
from eth_hash.auto import keccak

from connectors.settlement.economics import MarketUnits, market_id, taker_fee
from streams.runtime.sequence import SequenceTracker, Verdict

ZERO32 = b"\x00" * 32


class BatchInputError(ValueError):
    """The trade input cannot be batched (a trade-id gap: trades were lost upstream)."""


@dataclass(frozen=True)
class BatchConfig:
    max_trades: int = 1000
    max_age_ms: int = 60_000
    max_deltas: int = 400
    taker_fee_bps: int = 10
    fee_account: str = "fees"

    def __post_init__(self) -> None:
        if self.max_trades < 1 or self.max_age_ms < 1 or self.max_deltas < 5 or not 0 <= self.taker_fee_bps < 10_000:
            raise ValueError(f"invalid batch config {self}")


@dataclass(frozen=True, slots=True)
class TradeIn:
    market: str
    trade_id: int
    ts: int
    price: int
    qty: int
    maker_account: str
    taker_account: str
    taker_side: str  # "buy" | "sell"

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> TradeIn:
        side = r["taker_side"]
        side = side if isinstance(side, str) else str(side)
        return cls(r["market"], int(r["trade_id"]), int(r["ts"]), int(r["price"]), int(r["qty"]),
                   r["maker_account"], r["taker_account"], side.lower())

    @property
    def buyer(self) -> str:
        return self.taker_account if self.taker_side == "buy" else self.maker_account

    @property
    def seller(self) -> str:
        return self.maker_account if self.taker_side == "buy" else self.taker_account


@dataclass(frozen=True)
class Chain:
    """How off-chain names become addresses: accounts (a function) and asset tokens (a map)."""

    account_address: Callable[[str], str]
    token_address: Mapping[str, str]


@dataclass(frozen=True)
class Batch:
    market: str
    batch_seq: int
    first_trade_id: int
    last_trade_id: int
    prev_batch_hash: bytes
    merkle_root: bytes
    batch_hash: bytes
    close_reason: str
    event_ts: int
    deltas: tuple[tuple[str, str, int], ...]  # (account, asset, amount), sorted

    @property
    def trade_count(self) -> int:
        return self.last_trade_id - self.first_trade_id + 1

    def record(self) -> dict[str, Any]:
        return {
            "market": self.market, "batch_seq": self.batch_seq, "first_trade_id": self.first_trade_id,
            "last_trade_id": self.last_trade_id, "trade_count": self.trade_count,
            "prev_batch_hash": self.prev_batch_hash, "merkle_root": self.merkle_root,
            "batch_hash": self.batch_hash, "close_reason": self.close_reason, "event_ts": self.event_ts,
            "deltas": [{"account": a, "asset": s, "amount": Decimal(v)} for a, s, v in self.deltas],
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Batch:
        return cls(r["market"], int(r["batch_seq"]), int(r["first_trade_id"]), int(r["last_trade_id"]),
                   bytes(r["prev_batch_hash"]), bytes(r["merkle_root"]), bytes(r["batch_hash"]),
                   str(r["close_reason"]), int(r["event_ts"]),
                   tuple((d["account"], d["asset"], int(d["amount"])) for d in r["deltas"]))


def trade_leaf(mid: bytes, t: TradeIn, address: Callable[[str], str]) -> bytes:
    return keccak(encode(
        ["bytes32", "uint64", "uint64", "uint64", "uint64", "address", "address", "bool"],
        [mid, t.trade_id, t.ts, t.price, t.qty, address(t.buyer), address(t.seller), t.taker_side == "buy"]))


def merkle_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return ZERO32
    level = leaves
    while len(level) > 1:
        nxt = [keccak(level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def onchain_deltas(deltas: Iterable[tuple[str, str, int]], chain: Chain) -> list[tuple[str, str, int]]:
    return [(chain.account_address(a), chain.token_address[s], v) for a, s, v in deltas]


def batch_hash(prev: bytes, market: str, first: int, last: int, root: bytes,
               deltas: list[tuple[str, str, int]]) -> bytes:
    """The contract's batchHash over on-chain deltas (address, token, amount)."""
    deltas_hash = keccak(encode(["(address,address,int256)[]"], [deltas]))
    return keccak(encode(["bytes32", "bytes32", "uint64", "uint64", "bytes32", "bytes32"],
                         [prev, market_id(market), first, last, root, deltas_hash]))


def trade_deltas(t: TradeIn, units: MarketUnits, config: BatchConfig) -> list[tuple[str, str, int]]:
    """The (account, asset, amount) moves of one trade; they sum to zero per asset."""
    base = units.base_amount(t.qty)
    notional = units.quote_amount(t.price, t.qty)
    fee = taker_fee(notional, config.taker_fee_bps)
    buyer_pays = notional + (fee if t.taker_side == "buy" else 0)
    seller_gets = notional - (fee if t.taker_side == "sell" else 0)
    moves = [(t.buyer, units.base, base), (t.seller, units.base, -base),
             (t.buyer, units.quote, -buyer_pays), (t.seller, units.quote, seller_gets)]
    if fee:
        moves.append((config.fee_account, units.quote, fee))
    return moves


@dataclass
class MarketCursor:
    """Where a market's batching resumes: after the last emitted batch."""

    last_trade_id: int = 0
    last_batch_seq: int = 0
    last_batch_hash: bytes = ZERO32


@dataclass
class _Open:
    trades: list[TradeIn] = field(default_factory=list)
    net: dict[tuple[str, str], int] = field(default_factory=dict)


class Batcher:
    """Feeds trades in log order; returns the batches each trade closes."""

    def __init__(self, config: BatchConfig, units: Mapping[str, MarketUnits], chain: Chain,
                 resume: Mapping[str, MarketCursor] | None = None) -> None:
        self.config = config
        self.units = units
        self.chain = chain
        self.cursor: dict[str, MarketCursor] = {m: MarketCursor(c.last_trade_id, c.last_batch_seq, c.last_batch_hash)
                                                for m, c in (resume or {}).items()}
        self.sequence = SequenceTracker()
        for m, c in self.cursor.items():
            self.sequence.resume(m, c.last_trade_id)
        self.open: dict[str, _Open] = {}

    def add(self, trade: TradeIn) -> list[Batch]:
        verdict = self.sequence.observe(trade.market, trade.trade_id)
        if verdict is Verdict.DUPLICATE:
            return []  # already in an emitted batch, or a re-delivery
        if verdict is Verdict.GAP:
            gap = self.sequence.gaps[-1]
            raise BatchInputError(f"{gap.market}: trade_id gap, expected {gap.expected}, got {gap.got}")
        units = self.units[trade.market]
        moves = trade_deltas(trade, units, self.config)
        out: list[Batch] = []
        current = self.open.setdefault(trade.market, _Open())
        if current.trades:
            if trade.ts - current.trades[0].ts >= self.config.max_age_ms:
                out.append(self._close(trade.market, "age", trade.ts))
            else:
                keys = {(a, s) for a, s, _ in moves}
                if len(keys | current.net.keys()) > self.config.max_deltas:
                    out.append(self._close(trade.market, "size", current.trades[-1].ts))
            current = self.open.setdefault(trade.market, _Open())
        current.trades.append(trade)
        for a, s, v in moves:
            current.net[(a, s)] = current.net.get((a, s), 0) + v
        if len(current.trades) >= self.config.max_trades:
            out.append(self._close(trade.market, "size", trade.ts))
        return out

    def flush(self, market: str | None = None) -> list[Batch]:
        markets = [market] if market is not None else sorted(self.open)
        return [self._close(m, "age", self.open[m].trades[-1].ts) for m in markets
                if m in self.open and self.open[m].trades]

    def open_first(self, market: str) -> TradeIn | None:
        current = self.open.get(market)
        return current.trades[0] if current and current.trades else None

    def _close(self, market: str, reason: str, event_ts: int) -> Batch:
        current = self.open.pop(market)
        cursor = self.cursor.setdefault(market, MarketCursor())
        mid = market_id(market)
        root = merkle_root([trade_leaf(mid, t, self.chain.account_address) for t in current.trades])
        deltas = tuple(sorted((a, s, v) for (a, s), v in current.net.items() if v != 0))
        first, last = current.trades[0].trade_id, current.trades[-1].trade_id
        h = batch_hash(cursor.last_batch_hash, market, first, last, root, onchain_deltas(deltas, self.chain))
        batch = Batch(market, cursor.last_batch_seq + 1, first, last, cursor.last_batch_hash, root, h,
                      reason, event_ts, deltas)
        cursor.last_trade_id, cursor.last_batch_seq, cursor.last_batch_hash = last, batch.batch_seq, h
        return batch


def form_batches(trades: Iterable[TradeIn], config: BatchConfig, units: Mapping[str, MarketUnits],
                 chain: Chain, flush: bool = True) -> list[Batch]:
    """All batches of a trade log (the replay function)."""
    batcher = Batcher(config, units, chain)
    out: list[Batch] = []
    for t in trades:
        out.extend(batcher.add(t))
    if flush:
        out.extend(batcher.flush())
    return out
