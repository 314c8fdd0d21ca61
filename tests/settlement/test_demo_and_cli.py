"""The demo hook end to end (partial last batch closed by the flush) and the CLI's one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from connectors.settlement.demo import settle_and_report
from streams.settings import PROJECT_ROOT
from tests.settlement.conftest import Stage


def test_settle_and_report_settles_a_partial_batch_and_reconciles(stage: Stage) -> None:
    trades = stage.trades(1500, fund=False)  # the hook funds the accounts it sees in `trades`
    stage.produce_trades(trades)
    text = settle_and_report(stage.settings, timeout_s=120)
    assert "BTC-USD batch 1 trades 1..1000 FINALIZED" in text
    assert "BTC-USD batch 2 trades 1001..1500 FINALIZED" in text  # closed by the flush
    assert re.search(r"tx 0x[0-9a-f]{64} gas \d+", text)
    assert "reconciliation OK" in text, text
    # Running it again settles nothing new and still reconciles.
    again = settle_and_report(stage.settings, timeout_s=60)
    assert "2 batches" in again and "settled now: 0 batches" in again and "reconciliation OK" in again


def _xchg(stage: Stage, *args: str, deployment: str | None = None) -> subprocess.CompletedProcess[str]:
    s = stage.settings
    assert s.database_url is not None
    env = {**os.environ, "EXCHANGE_TOPIC_PREFIX": s.topic_prefix, "EXCHANGE_KAFKA_BOOTSTRAP": s.bootstrap_servers,
           "EXCHANGE_RPC_URL": s.chain_rpc_url, "EXCHANGE_DATABASE_URL": s.database_url.get_secret_value(),
           "EXCHANGE_SETTLEMENT_DEPLOYMENT_FILE": deployment or str(s.settlement_deployment_file)}
    return subprocess.run([sys.executable, "-m", "streams.cli", "settle", *args], env=env, capture_output=True,
                          text=True, cwd=PROJECT_ROOT, timeout=120, check=False)


def test_cli_reconcile_status_and_one_line_errors(stage: Stage) -> None:
    missing = _xchg(stage, "reconcile", deployment=str(stage.tmp / "nope.json"))
    assert missing.returncode == 1 and "run `xchg settle deploy` first" in missing.stderr
    assert "Traceback" not in missing.stderr
    not_halted = _xchg(stage, "resume", "BTC-USD")
    assert not_halted.returncode == 1 and "is not halted" in not_halted.stderr
    ok = _xchg(stage, "reconcile")
    assert ok.returncode == 0 and "reconciliation OK" in ok.stdout
    deployed = _xchg(stage, "deploy", "--fund", "acct001")
    assert deployed.returncode == 0
    assert json.loads(deployed.stdout.strip().splitlines()[-1])["settlement"] == stage.deployment.settlement
