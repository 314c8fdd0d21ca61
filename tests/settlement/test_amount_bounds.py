"""No balance delta of a settlement batch can leave its type (connectors/settlement/economics.py
``check_markets``): the registry passes, and a market whose bounds would allow it is refused at
start-up with one line naming it (no service needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from connectors.settlement.economics import check_markets, load_assets
from connectors.settlement.errors import SettlementError
from streams.markets import MarketRegistry
from streams.settings import load_settings


def test_the_registry_fits_decimal_38_at_the_largest_batch() -> None:
    settings = load_settings()
    units = check_markets(MarketRegistry.load(settings.markets_file), load_assets(settings.settlement_assets_file))
    assert set(units) == {m.symbol for m in MarketRegistry.load(settings.markets_file)}


def test_bounds_that_could_overflow_a_batch_are_refused(tmp_path: Path) -> None:
    # The registry's ceilings keep every market inside decimal(38, 0) with the shipped tokens; a
    # quote token of 30 decimals makes one order of BTC-USD worth 10^15 * 10^22 token units.
    settings = load_settings()
    raw = yaml.safe_load(settings.settlement_assets_file.read_text())
    next(a for a in raw["assets"] if a["symbol"] == "USD")["decimals"] = 30
    path = tmp_path / "assets.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SettlementError, match=r"^BTC-USD: a batch of 1000 trades could move \d+ token units"):
        check_markets(MarketRegistry.load(settings.markets_file), load_assets(path))
