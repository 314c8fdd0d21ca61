"""Settlement fixtures: each test gets its own namespace (topics), its own contract deployment
(own operator key, so nonces never interleave) and therefore its own database rows (keyed by the
Settlement address), on the session's shared anvil, broker and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import SecretStr
from web3 import Web3

from connectors.settlement.batcher import Batch, BatchConfig, Chain, TradeIn, form_batches
from connectors.settlement.chain import Deployment, deploy, fund_accounts, web3
from connectors.settlement.economics import Asset, MarketUnits, account_address, check_markets, load_assets
from connectors.settlement.submitter import Submitter, ensure_schema
from connectors.settlement.workload import synthetic_trades
from streams.markets import MarketRegistry
from streams.runtime.clients import make_producer
from streams.runtime.namespace import Namespace
from streams.serde.codec import Codec
from streams.serde.topics import TRADES
from streams.services.postgres import PostgresCluster
from streams.settings import Settings, load_settings
from tests.pipeline import fresh_namespace
from tests.services import Endpoint


@dataclass
class Stage:
    settings: Settings
    ns: Namespace
    deployment: Deployment
    assets: dict[str, Asset]
    units: dict[str, MarketUnits]
    w3: Web3
    tmp: Any

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        reply = self.w3.provider.make_request(method, params or [])  # type: ignore[arg-type]
        assert "error" not in reply, reply
        return reply.get("result")

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def chain(self) -> Chain:
        return Chain(account_address, self.deployment.tokens)

    def config(self) -> BatchConfig:
        s = self.settings
        return BatchConfig(max_trades=s.settlement_batch_trades, max_age_ms=s.settlement_batch_max_age_ms,
                           max_deltas=s.settlement_max_deltas, taker_fee_bps=s.settlement_taker_fee_bps,
                           fee_account=s.settlement_fee_account)

    def trades(self, count: int, accounts: int = 20, market: str = "BTC-USD", fund: bool = True) -> list[TradeIn]:
        records = synthetic_trades(market, count, accounts=accounts)
        trades = [TradeIn.from_record(r) for r in records]
        if fund:
            u = self.units[market]
            fund_accounts(self.settings, self.deployment, sorted({a for t in trades for a in (t.buyer, t.seller)}),
                          self.assets, symbols=(u.base, u.quote))
        return trades

    def batches(self, trades: list[TradeIn]) -> list[Batch]:
        return form_batches(trades, self.config(), self.units, self.chain())

    def produce_trades(self, trades: list[TradeIn]) -> None:
        codec = Codec()
        producer = make_producer(self.settings.bootstrap_servers)
        for r in synthetic_records(trades):
            producer.produce(self.ns(TRADES), codec.encode(TRADES, r), r["market"].encode())
            producer.poll(0)
        assert producer.flush(30) == 0

    def produce_batches(self, batches: list[Batch]) -> None:
        from connectors.settlement.batch_service import DEPLOYMENT_HEADER
        from streams.serde.topics import SETTLEMENT_BATCHES

        codec = Codec()
        producer = make_producer(self.settings.bootstrap_servers)
        for b in batches:
            producer.produce(self.ns(SETTLEMENT_BATCHES), codec.encode(SETTLEMENT_BATCHES, b.record()), b.market.encode(),
                             headers=[(DEPLOYMENT_HEADER, self.deployment.settlement.encode())])
        assert producer.flush(30) == 0

    def submitter(self, kafka: bool = False) -> Submitter:
        return Submitter(self.settings, self.deployment, kafka=kafka)

    def drive(self, sub: Submitter, done: Any, timeout: float = 90.0, mine: bool = True) -> None:
        """Step the submitter, mining a block whenever it has nothing to do, until ``done()``."""
        import time

        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out: {[(r.batch_seq, r.state) for r in sub.rows()]}"
            if not sub.step() and mine:
                self.mine(4)


def synthetic_records(trades: list[TradeIn]) -> list[dict[str, Any]]:
    return [{"market": t.market, "trade_id": t.trade_id, "seq": 2 * t.trade_id, "ts": t.ts, "price": t.price,
             "qty": t.qty, "maker_order_id": f"m{t.trade_id}", "maker_account": t.maker_account,
             "taker_order_id": f"t{t.trade_id}", "taker_account": t.taker_account, "taker_side": t.taker_side,
             "command_id": f"c{t.trade_id}", "input_partition": 0, "input_offset": t.trade_id} for t in trades]


@pytest.fixture
def stage(chain: Endpoint, postgres: Endpoint, kafka_bootstrap: str, unique: str, tmp_path: Any) -> Iterator[Stage]:
    ns = fresh_namespace(kafka_bootstrap, f"settle-{unique}")
    settings = load_settings().model_copy(update={
        "topic_prefix": ns.prefix, "kafka_bootstrap": kafka_bootstrap, "rpc_url": chain.address,
        "database_url": SecretStr(postgres.address), "settlement_deployment_file": tmp_path / "deployment.json",
        "settlement_operator_key": None, "settlement_min_depth": 4,
    })
    assets = load_assets(settings.settlement_assets_file)
    units = check_markets(MarketRegistry.load(settings.markets_file), assets)
    ensure_schema(settings)
    deployment = deploy(settings, assets)
    yield Stage(settings, ns, deployment, assets, units, web3(chain.address), tmp_path)


@dataclass
class Outage:
    """Stops and restarts the session's local PostgreSQL (the cluster other tests share too)."""

    cluster: PostgresCluster

    def stop(self) -> None:
        # Immediate mode: every session is cut at once, as in a crash (the sink's outage test does the same).
        assert self.cluster.down(mode="immediate"), "PostgreSQL was not running"

    def start(self) -> None:
        self.cluster.up()

    def running(self) -> bool:
        return self.cluster.running()


@pytest.fixture
def pg_outage(postgres: Endpoint) -> Iterator[Outage]:
    """PostgreSQL outages for a test; the cluster is always running again afterwards, whatever
    the test did, because everyone else uses it."""
    if postgres.mode != "local":
        pytest.skip("stopping PostgreSQL needs the project's local cluster")
    outage = Outage(PostgresCluster(load_settings()))
    try:
        yield outage
    finally:
        if not outage.running():
            outage.start()
