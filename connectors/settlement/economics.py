"""Settlement economics: assets, exact unit conversion, fees and account addresses. Pure, no I/O
except reading the asset file.

**Trade → token amounts.** A trade of market M (base B, quote Q) at price ``p`` (integer units of
10^-price_decimals Q) and quantity ``q`` (integer units of 10^-qty_decimals B) moves

* ``q * 10^(dec(B) - qty_decimals)`` base tokens from the seller to the buyer, and
* ``p * q * 10^(dec(Q) - price_decimals - qty_decimals)`` quote tokens (the notional) from the
  buyer to the seller,

where ``dec(X)`` is asset X's on-chain token decimals (``infra/assets.yaml``). Both conversions are
exact because ``check_markets`` refuses, at start-up, any market with ``qty_decimals > dec(B)`` or
``price_decimals + qty_decimals > dec(Q)``: there is no rounding in the conversion at all.

**Fees.** The taker pays ``notional * taker_fee_bps // 10_000`` quote tokens (rounded *down*, in
the taker's favour, computed per trade on the exact integer notional) to the fee account; the maker
pays nothing (maker fee 0: makers provide the liquidity the batch nets against). A taker buyer pays
notional + fee, a taker seller receives notional - fee. Hence per asset the deltas of a trade sum
to exactly zero, fee account included.

**Accounts.** Off-chain account ids (``"acct007"``) map to on-chain addresses deterministically:
the dev chain derives a private key ``keccak256("xchg-dev-account:" + id)`` and uses its address,
so the deploy step can fund and deposit for any account, and every component computes the same
address without a registry. (A production deployment would swap ``account_address`` for a
registry lookup; nothing else depends on the derivation.) The fee account is an ordinary account
id (``EXCHANGE_SETTLEMENT_FEE_ACCOUNT``, default ``"fees"``) mapped the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from eth_account import Account
from eth_hash.auto import keccak

from connectors.settlement.errors import SettlementError
from streams.config_files import read_section
from streams.markets import MarketConfig, MarketRegistry

BPS = 10_000


@dataclass(frozen=True)
class Asset:
    symbol: str
    decimals: int


def load_assets(path: Path) -> dict[str, Asset]:
    raw = read_section(path, "assets", list, "asset file", "EXCHANGE_SETTLEMENT_ASSETS_FILE", SettlementError)
    assets: dict[str, Asset] = {}
    for entry in raw["assets"]:
        symbol, decimals = entry.get("symbol"), entry.get("decimals")
        if not isinstance(symbol, str) or not isinstance(decimals, int) or not 0 <= decimals <= 36:
            raise SettlementError(f"asset file {path}: bad entry {entry!r} (symbol: str, decimals: 0..36)")
        if symbol in assets:
            raise SettlementError(f"asset file {path}: duplicate asset {symbol}")
        assets[symbol] = Asset(symbol, decimals)
    return assets


@dataclass(frozen=True)
class MarketUnits:
    """Exact integer scales of one market: token amounts = market units * scale."""

    symbol: str
    base: str
    quote: str
    base_scale: int
    quote_scale: int

    def base_amount(self, qty: int) -> int:
        return qty * self.base_scale

    def quote_amount(self, price: int, qty: int) -> int:
        return price * qty * self.quote_scale


def market_units(market: MarketConfig, assets: dict[str, Asset]) -> MarketUnits:
    for symbol in (market.base, market.quote):
        if symbol not in assets:
            raise SettlementError(f"market {market.symbol}: asset {symbol} missing from the asset file")
    base, quote = assets[market.base], assets[market.quote]
    if market.qty_decimals > base.decimals:
        raise SettlementError(f"market {market.symbol}: qty_decimals {market.qty_decimals} > {base.symbol} "
                              f"token decimals {base.decimals}: base amounts would not convert exactly")
    if market.price_decimals + market.qty_decimals > quote.decimals:
        raise SettlementError(
            f"market {market.symbol}: price_decimals + qty_decimals = "
            f"{market.price_decimals + market.qty_decimals} > {quote.symbol} token decimals {quote.decimals}: "
            "quote amounts would not convert exactly")
    return MarketUnits(market.symbol, market.base, market.quote,
                       10 ** (base.decimals - market.qty_decimals),
                       10 ** (quote.decimals - market.price_decimals - market.qty_decimals))


# Trades a batch holds at the most (the batcher's default close; larger batches are refused).
MAX_BATCH_TRADES = 1000
# BalanceDelta.amount is a decimal(38, 0); the contract's balances are int256 (far larger).
MAX_TOKEN_AMOUNT = 10**38 - 1


def check_markets(registry: MarketRegistry, assets: dict[str, Asset],
                  batch_trades: int = MAX_BATCH_TRADES) -> dict[str, MarketUnits]:
    """Start-up check: every market converts exactly, and no balance delta of a batch can leave
    its type: a trade moves at most ``max_qty`` base units and ``max_notional`` quote units (the
    engine refuses larger orders, and a trade is at most its maker's notional), so one account's
    delta in a batch of ``batch_trades`` trades is at most that many times the largest amount.
    Returns the per-market scales; raises ``SettlementError`` naming the market otherwise."""
    units = {m.symbol: market_units(m, assets) for m in registry}
    for market in registry:
        spec, scale = market.spec(), units[market.symbol]
        largest = max(scale.base_amount(spec.max_qty or 0), (spec.max_notional or 0) * scale.quote_scale)
        if batch_trades * largest > MAX_TOKEN_AMOUNT:
            raise SettlementError(
                f"{market.symbol}: a batch of {batch_trades} trades could move {batch_trades * largest} token "
                f"units for one account, beyond decimal(38,0): lower max_qty / max_notional in the markets file")
    return units


def taker_fee(notional: int, fee_bps: int) -> int:
    """Taker fee in quote tokens, rounded down."""
    return notional * fee_bps // BPS


def market_id(symbol: str) -> bytes:
    """On-chain market id: keccak256 of the exact symbol."""
    return keccak(symbol.encode())


def account_key(account: str) -> bytes:
    """Dev-chain private key of an off-chain account id (see module doc)."""
    return keccak(b"xchg-dev-account:" + account.encode())


@lru_cache(maxsize=65536)
def account_address(account: str) -> str:
    """Checksummed on-chain address of an off-chain account id."""
    return str(Account.from_key(account_key(account)).address)
