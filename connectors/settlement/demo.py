"""Demo hook: settle what the engine traded in the default namespace and report it.

``settle_and_report(settings)`` deploys when needed (mock tokens + Settlement on the local anvil),
funds the accounts seen in ``trades``, runs the batcher until the topic is drained (closing the last
partial batch with a flush), submits every batch, mines blocks on anvil until each is final (anvil
only mines on transactions), reconciles, and returns a text report with each batch's transaction
hash and gas used and the reconciliation verdict.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from web3 import Web3

from connectors.settlement.chain import Deployment, deployment_path, fund_accounts, web3
from connectors.settlement.chain import deploy as deploy_contracts
from connectors.settlement.economics import Asset, check_markets, load_assets
from connectors.settlement.errors import SettlementError
from streams.markets import MarketRegistry
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.serde.codec import Codec

MAX_LINES = 12


def ensure_deployment(settings: Settings, assets: dict[str, Asset], reuse: bool = True) -> Deployment:
    """The namespace's deployment when it still exists on the chain, else a new one."""
    path = deployment_path(settings)
    w3 = web3(settings.chain_rpc_url)
    if not w3.is_connected():
        raise SettlementError(f"no chain answers at {settings.chain_rpc_url} (start it with `xchg up`)")
    if reuse and path.exists():
        deployment = Deployment.load(path)
        if int(w3.eth.chain_id) == deployment.chain_id and len(w3.eth.get_code(Web3.to_checksum_address(deployment.settlement))) > 0 \
                and set(deployment.tokens) == set(assets):
            return deployment
    return deploy_contracts(settings, assets)


def mine(settings: Settings, blocks: int = 1) -> None:
    web3(settings.chain_rpc_url).provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]


def settle_and_report(settings: Settings, timeout_s: float = 180.0) -> str:
    from connectors.settlement.batch_service import BatcherRun, BatchService, read_batches
    from connectors.settlement.decide import State
    from connectors.settlement.reconcile import read_trades, reconcile
    from connectors.settlement.submitter import Submitter, ensure_schema
    from streams.serde.topics import SETTLEMENT_BATCHES, TRADES

    assets = load_assets(settings.settlement_assets_file)
    units = check_markets(MarketRegistry.load(settings.markets_file), assets)
    ensure_schema(settings)
    deployment = ensure_deployment(settings, assets)
    trades = read_trades(settings.bootstrap_servers, settings.namespace(TRADES), _codec())
    accounts = sorted({a for log in trades.values() for t in log.values() for a in (t.maker_account, t.taker_account)})
    fund_accounts(settings, deployment, accounts, assets)
    deployment = Deployment.load(deployment_path(settings))

    run = BatcherRun(flush_idle_s=0.5, idle_exit_s=1.0)
    BatchService(settings, deployment, units, run).run()

    submitter = Submitter(settings, deployment).acquire()
    already = {(r.market, r.batch_seq) for r in submitter.rows() if r.state is State.FINALIZED}
    try:
        # Everything the batcher emitted, read back now (the submitter's group consumer may still be
        # joining; ingestion is idempotent, so it re-reading the same batches later is harmless).
        submitter.ingest(read_batches(settings.bootstrap_servers, settings.namespace(SETTLEMENT_BATCHES), _codec(),
                                      deployment.settlement))
        deadline = time.monotonic() + timeout_s
        while True:
            progressed = submitter.step()
            rows = submitter.rows()
            if all(r.state is State.FINALIZED for r in rows) and not progressed:
                break  # (also: nothing to settle)
            if submitter.halted():
                break
            if time.monotonic() > deadline:
                raise SettlementError(f"settlement did not finalize within {timeout_s:.0f}s: "
                                      + ", ".join(f"{r.market}#{r.batch_seq}={r.state}" for r in rows))
            if not progressed:
                mine(settings, 4)  # anvil mines only on transactions: finality needs blocks
        rows = submitter.rows()
        halts = submitter.ledger.halts()
    finally:
        submitter.close()
    report = reconcile(settings, deployment, units)
    new = [r for r in rows if (r.market, r.batch_seq) not in already]
    lines = [f"settlement: {len(rows)} batches, {sum(r.last_trade_id - r.first_trade_id + 1 for r in rows)} trades, "
             f"contract {deployment.settlement}; settled now: {len(new)} batches"]
    shown = new[:MAX_LINES] if new else rows[-1:]
    if len(new) > MAX_LINES:
        lines.append(f"  (first {MAX_LINES} of {len(new)} new batches)")
    for r in shown:
        tx = r.tx_hash.hex() if r.tx_hash else "-"
        lines.append(f"  {r.market} batch {r.batch_seq} trades {r.first_trade_id}..{r.last_trade_id} {r.state} "
                     f"tx 0x{tx} gas {r.gas_used}")
    lines.extend(f"  HALTED {m} at batch {seq}: {reason} (fix, then `xchg settle resume {m}`)" for m, seq, reason in halts)
    lines.append(report.text())
    return "\n".join(lines)


def _codec() -> Codec:
    from streams.serde.codec import Codec

    return Codec()
