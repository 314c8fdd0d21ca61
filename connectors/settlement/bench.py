"""``xchg bench settlement``: gas per trade of real ``settleBatch`` transactions at 1000 trades per batch.

A fresh deployment (own namespace) on the configured chain, ``accounts`` funded accounts trading
the seeded synthetic BTC-USD workload (``connectors.settlement.workload``), batches formed by the
pure batcher with ``max_trades=1000``, each sent as a transaction; the figures come from the
receipts' ``gasUsed`` (intrinsic and calldata gas included). No Kafka or database involved.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from connectors.settlement.batcher import BatchConfig, Chain, TradeIn, form_batches, onchain_deltas
from connectors.settlement.chain import (
    TxSender,
    deploy,
    fund_accounts,
    operator_account,
    settlement_contract,
    web3,
)
from connectors.settlement.economics import account_address, check_markets, load_assets, market_id
from connectors.settlement.errors import SettlementError
from connectors.settlement.workload import synthetic_trades
from streams.markets import MarketRegistry
from streams.settings import Settings, load_settings


def run(trades: int = 3000, accounts: int = 100, market: str = "BTC-USD") -> dict[str, Any]:
    base = load_settings()
    scratch = Path(tempfile.mkdtemp(prefix="xchg-bench-settle-"))
    settings = base.model_copy(update={"topic_prefix": f"bench-settle-{uuid.uuid4().hex[:8]}.",
                                       "settlement_operator_key": None,
                                       "settlement_deployment_file": scratch / "deployment.json"})
    try:
        return _run(settings, trades, accounts, market)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(settings: Settings, trades: int, accounts: int, market: str) -> dict[str, Any]:
    assets = load_assets(settings.settlement_assets_file)
    units = check_markets(MarketRegistry.load(settings.markets_file), assets)
    deployment = deploy(settings, assets)
    log = [TradeIn.from_record(r) for r in synthetic_trades(market, trades, accounts=accounts)]
    fund_accounts(settings, deployment, sorted({a for t in log for a in (t.maker_account, t.taker_account)}), assets,
                  symbols=(units[market].base, units[market].quote))
    config = BatchConfig(max_trades=1000, max_deltas=470, taker_fee_bps=settings.settlement_taker_fee_bps,
                         fee_account=settings.settlement_fee_account)
    chain = Chain(account_address, deployment.tokens)
    batches = form_batches(log, config, units, chain)
    w3 = web3(settings.chain_rpc_url)
    contract = settlement_contract(w3, deployment.settlement)
    sender = TxSender(w3)
    operator = operator_account(settings)
    gas: list[int] = []
    for b in batches:
        data = contract.encode_abi("settleBatch", [market_id(b.market), b.first_trade_id, b.last_trade_id,
                                                   b.prev_batch_hash, b.merkle_root, onchain_deltas(b.deltas, chain)])
        sender.send(operator, {"to": contract.address, "data": data})
        gas.extend(int(r["gasUsed"]) for r in sender.wait())
    if bytes(contract.functions.lastBatchHash(market_id(market)).call()) != batches[-1].batch_hash:
        raise SettlementError("bench: on-chain lastBatchHash differs from the batcher's")
    total = sum(gas)
    return {
        "bench": "settlement", "trades": trades, "accounts": accounts, "batches": len(batches),
        "trades_per_transaction": trades / len(batches),
        "deltas_per_batch_max": max(len(b.deltas) for b in batches),
        "gas_per_trade": round(total / trades, 1), "gas_per_batch_max": max(gas), "gas_total": total,
        "target_gas_per_trade": 4000, "ok": total / trades <= 4000,
    }
