"""``xchg settle reconcile``: the chain against the batches and the trade log; every mismatch listed.

Checks, per deployment (namespace):

1. **Events ↔ batches.** Every ``BatchSettled`` event must match the batch of the same hash in
   ``settlement.batches`` (market, trade range, Merkle root, previous hash); an event without a
   batch is a mismatch. Events at or below the ``finalized`` tag and at least ``min_depth`` deep
   count as final; newer ones are listed as pending finality (not a mismatch).
2. **Batches ↔ trade log.** Each batch is recomputed from the trades of its range in ``trades``
   (contiguity, Merkle root, net deltas, batch hash chained to the previous batch).
3. **Sequence.** ``lastSettledSeq`` / ``lastBatchHash`` of each market equal the last settled batch.
4. **Balances.** For every account and token touched: on-chain ``balanceOf`` = deposits
   (``Deposited``) - withdrawal requests (``WithdrawalRequested``) + the trade moves of every trade
   in a batch settled on chain, recomputed from the trade log.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException

from connectors.settlement.batch_service import _partitions, batch_config, read_batches
from connectors.settlement.batcher import (
    ZERO32,
    Batch,
    Chain,
    TradeIn,
    batch_hash,
    merkle_root,
    onchain_deltas,
    trade_deltas,
    trade_leaf,
)
from connectors.settlement.chain import Deployment, finalized_block, rpc_batch, settlement_contract, web3
from connectors.settlement.economics import MarketUnits, account_address, market_id
from streams.runtime.reader import read_range, standalone_consumer, watermarks
from streams.serde.codec import Codec
from streams.serde.topics import SETTLEMENT_BATCHES, TRADES
from streams.settings import Settings


@dataclass
class Report:
    events: int = 0
    final_events: int = 0
    batches: int = 0
    trades_settled: int = 0
    balances_checked: int = 0
    pending_finality: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def text(self) -> str:
        head = (f"reconciliation {'OK' if self.ok else 'FAILED'}: {self.events} BatchSettled events "
                f"({self.final_events} final), {self.batches} batches, {self.trades_settled} trades settled, "
                f"{self.balances_checked} balances checked, {len(self.mismatches)} mismatches")
        lines = [head, *(f"  mismatch: {m}" for m in self.mismatches),
                 *(f"  pending finality: {p}" for p in self.pending_finality)]
        return "\n".join(lines)


def read_trades(bootstrap: str, topic: str, codec: Codec) -> dict[str, dict[int, TradeIn]]:
    out: dict[str, dict[int, TradeIn]] = defaultdict(dict)
    consumer = standalone_consumer(bootstrap)
    try:
        for p in _partitions(consumer, topic):
            low, high = watermarks(consumer, topic, p)
            for m in read_range(consumer, topic, p, low, high):
                t = TradeIn.from_record(codec.decode(TRADES, m.value()))
                out[t.market][t.trade_id] = t
    finally:
        consumer.close()
    return out


def reconcile(settings: Settings, deployment: Deployment, units: dict[str, MarketUnits],
              codec: Codec | None = None) -> Report:
    codec = codec or Codec()
    ns = settings.namespace
    report = Report()
    chain = Chain(account_address, deployment.tokens)
    config = batch_config(settings)
    try:
        batches = read_batches(settings.bootstrap_servers, ns(SETTLEMENT_BATCHES), codec, deployment.settlement)
        trades = read_trades(settings.bootstrap_servers, ns(TRADES), codec)
    except KafkaException as error:
        report.mismatches.append(f"cannot read the batches or the trade log: {error}")
        return report
    by_hash = {b.batch_hash: b for b in batches}
    report.batches = len(batches)

    # 2. batches against the trade log
    per_market: dict[str, list[Batch]] = defaultdict(list)
    for b in batches:
        per_market[b.market].append(b)
    for market, chain_batches in per_market.items():
        prev, next_first = ZERO32, 1
        log = trades.get(market, {})
        for b in sorted(chain_batches, key=lambda x: x.batch_seq):
            where = f"{market} batch {b.batch_seq} ({b.first_trade_id}..{b.last_trade_id})"
            if b.first_trade_id != next_first:
                report.mismatches.append(f"{where}: starts at {b.first_trade_id}, expected {next_first}")
            if b.prev_batch_hash != prev:
                report.mismatches.append(f"{where}: prev_batch_hash does not chain to the previous batch")
            missing = [i for i in range(b.first_trade_id, b.last_trade_id + 1) if i not in log]
            if missing:
                report.mismatches.append(f"{where}: {len(missing)} trades missing from the trade log (first {missing[0]})")
            else:
                ts = [log[i] for i in range(b.first_trade_id, b.last_trade_id + 1)]
                mid = market_id(market)
                root = merkle_root([trade_leaf(mid, t, account_address) for t in ts])
                net: dict[tuple[str, str], int] = defaultdict(int)
                for t in ts:
                    for a, s, v in trade_deltas(t, units[market], config):
                        net[(a, s)] += v
                deltas = tuple(sorted((a, s, v) for (a, s), v in net.items() if v))
                if root != b.merkle_root:
                    report.mismatches.append(f"{where}: Merkle root differs from the trade log's")
                if deltas != b.deltas:
                    report.mismatches.append(f"{where}: net deltas differ from the trade log's")
                h = batch_hash(b.prev_batch_hash, market, b.first_trade_id, b.last_trade_id, b.merkle_root,
                               onchain_deltas(b.deltas, chain))
                if h != b.batch_hash:
                    report.mismatches.append(f"{where}: batch_hash does not match its contents")
            prev, next_first = b.batch_hash, b.last_trade_id + 1

    # 1. events against batches
    w3 = web3(settings.chain_rpc_url)
    contract = settlement_contract(w3, deployment.settlement)
    tip = w3.eth.block_number
    finalized = finalized_block(w3)
    events = sorted(contract.events.BatchSettled.get_logs(from_block=deployment.deploy_block, to_block=tip),
                    key=lambda e: (e["blockNumber"], e["logIndex"]))  # (anvil's order can differ after a reorg)
    report.events = len(events)
    settled: list[Batch] = []
    last_by_market: dict[bytes, Batch] = {}
    for ev in events:
        args = ev["args"]
        h = bytes(args["batchHash"])
        batch = by_hash.get(h)
        final = ev["blockNumber"] <= finalized and tip - ev["blockNumber"] + 1 >= settings.settlement_min_depth
        label = f"event in block {ev['blockNumber']} tx {bytes(ev['transactionHash']).hex()}"
        if batch is None:
            report.mismatches.append(f"{label}: batch hash {h.hex()} is not in settlement.batches")
            continue
        if not final:
            report.pending_finality.append(f"{batch.market} batch {batch.batch_seq}: {label}")
        else:
            report.final_events += 1
        expect = (market_id(batch.market), batch.first_trade_id, batch.last_trade_id, batch.merkle_root, batch.prev_batch_hash)
        got = (bytes(args["market"]), int(args["firstTradeSeq"]), int(args["lastTradeSeq"]),
               bytes(args["merkleRoot"]), bytes(args["prevBatchHash"]))
        if expect != got:
            report.mismatches.append(f"{batch.market} batch {batch.batch_seq}: {label} differs from the batch record")
        settled.append(batch)
        last_by_market[market_id(batch.market)] = batch
        report.trades_settled += batch.trade_count
    if len({b.batch_hash for b in settled}) != len(settled):
        report.mismatches.append("a batch was settled more than once")

    # 3. sequence state
    for mid, b in last_by_market.items():
        seq = int(contract.functions.lastSettledSeq(mid).call())
        last_hash = bytes(contract.functions.lastBatchHash(mid).call())
        if seq != b.last_trade_id or last_hash != b.batch_hash:
            report.mismatches.append(f"{b.market}: lastSettledSeq {seq} / lastBatchHash differ from the last settled"
                                     f" batch {b.batch_seq} (..{b.last_trade_id})")

    # 4. balances
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for ev in contract.events.Deposited.get_logs(from_block=deployment.deploy_block, to_block=tip):
        expected[(str(ev["args"]["account"]), str(ev["args"]["token"]))] += int(ev["args"]["amount"])
    for ev in contract.events.WithdrawalRequested.get_logs(from_block=deployment.deploy_block, to_block=tip):
        expected[(str(ev["args"]["account"]), str(ev["args"]["token"]))] -= int(ev["args"]["amount"])
    for b in settled:
        log = trades.get(b.market, {})
        for i in range(b.first_trade_id, b.last_trade_id + 1):
            if i in log:
                for a, s, v in trade_deltas(log[i], units[b.market], config):
                    expected[(account_address(a), deployment.tokens[s])] += v
    pairs = sorted(expected.items())
    results = rpc_batch(settings.chain_rpc_url, [
        ("eth_call", [{"to": contract.address, "data": contract.encode_abi("balanceOf", [a, t])}, hex(tip)])
        for (a, t), _ in pairs])
    for ((account, token), amount), result in zip(pairs, results, strict=True):
        got_balance = int(result, 16)
        report.balances_checked += 1
        if got_balance != amount:
            report.mismatches.append(f"balance of {account} in {token}: chain {got_balance}, trade log {amount}")
    return report


def balances(settings: Settings, deployment: Deployment, accounts: list[str]) -> dict[tuple[str, str], int]:
    """On-chain settlement balances of off-chain accounts, per asset (tests, demo)."""
    w3 = web3(settings.chain_rpc_url)
    contract = settlement_contract(w3, deployment.settlement)
    out: dict[tuple[str, str], Any] = {}
    for a in accounts:
        for s, token in deployment.tokens.items():
            out[(a, s)] = int(contract.functions.balanceOf(account_address(a), token).call())
    return out
