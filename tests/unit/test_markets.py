"""The market registry (streams/markets.py): a malformed markets file is one clean line naming
the market, the field and the problem; the shipped registry loads and bounds every market."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streams.domain.market import MAX_NOTIONAL_CEILING, MAX_QTY_CEILING
from streams.markets import MarketRegistry, RegistryError
from streams.settings import load_settings

GOOD = {"symbol": "ABC-USD", "base": "ABC", "quote": "USD", "price_decimals": 2, "qty_decimals": 3,
        "tick_size": "0.01", "lot_size": "0.001", "max_qty": "1000", "max_notional": "1000000"}


@pytest.mark.parametrize(("change", "needle"), [
    ({"tick_size": "0.001"}, "market ABC-USD: tick_size: 0.001 is not a whole number of price units"),
    ({"qty_decimals": "x"}, "market ABC-USD: qty_decimals: Input should be a valid integer"),
    ({"max_qty": None}, "market ABC-USD: max_qty: "),
    ({"max_qty": "0.0005"}, "market ABC-USD: max_qty: 0.0005 is not a whole number of quantity units"),
    ({"max_qty": "10000000"}, f"market ABC-USD: max_qty: 10000000000 quantity units is above the ceiling {MAX_QTY_CEILING}"),
    ({"max_notional": "1e40"}, f"is above the ceiling {MAX_NOTIONAL_CEILING}"),
    ({"collar_pct": 100}, "market ABC-USD: collar_pct: "),
    ({"base": "XYZ"}, "market ABC-USD: symbol: must be BASE-QUOTE (XYZ-USD)"),
])
def test_a_malformed_market_is_one_line_naming_market_and_field(tmp_path: Path, change: dict[str, object],
                                                                 needle: str) -> None:
    entry = {**GOOD, **change}
    path = tmp_path / "markets.yaml"
    path.write_text(yaml.safe_dump({"markets": [{k: v for k, v in entry.items() if v is not None}]}))
    with pytest.raises(RegistryError) as refused:
        MarketRegistry.load(path)
    message = str(refused.value)
    assert needle in message and "\n" not in message and "Value error" not in message


def test_the_shipped_registry_bounds_every_market() -> None:
    for market in MarketRegistry.load(load_settings().markets_file):
        spec = market.spec()
        assert spec.max_qty is not None and spec.max_qty <= MAX_QTY_CEILING
        assert spec.max_notional is not None and spec.max_notional <= MAX_NOTIONAL_CEILING
        assert spec.collar_num is not None
