"""The market registry: symbol, assets, integer units, tick, lot, minimum size and price band.

Loaded from ``infra/markets.yaml`` (``EXCHANGE_MARKETS_FILE``) and shared by every component, so
the engine, the load generator, the sink and settlement agree on units. ``MarketConfig.spec()``
is the engine's integer view (``streams.domain.market.MarketSpec``).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streams.config_files import read_section
from streams.domain.market import (
    MAX_NOTIONAL_CEILING,
    MAX_QTY_CEILING,
    MarketSpec,
    UnitError,
    from_units,
    to_units,
)
from streams.errors import OperatorError


class RegistryError(OperatorError, ValueError):
    """The market file is missing or invalid; the message names the market and field."""


class MarketConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    symbol: str = Field(pattern=r"^[A-Z0-9]+-[A-Z0-9]+$")
    base: str
    quote: str
    price_decimals: int = Field(ge=0, le=18)
    qty_decimals: int = Field(ge=0, le=18)
    tick_size: Decimal = Field(gt=0)
    lot_size: Decimal = Field(gt=0)
    min_qty: Decimal | None = Field(default=None, gt=0)
    price_band_pct: Decimal | None = Field(default=None, ge=0)
    # Per order, in base asset (quantity) and quote asset (price x quantity); see
    # docs/matching-rules.md for why every derived total then fits its type.
    max_qty: Decimal = Field(gt=0)
    max_notional: Decimal = Field(gt=0)
    # Both sides of every limit price within this percentage of a reference price that moves
    # once per collar_interval_s (unset: no collar).
    collar_pct: Decimal | None = Field(default=None, ge=0, lt=100)
    collar_interval_s: int = Field(default=60, gt=0, le=86_400)

    @model_validator(mode="after")
    def _exact_units(self) -> MarketConfig:
        # Each message names its field: the loader prints it as "market X: <message>".
        def units(field: str, amount: Decimal, decimals: int, what: str) -> int:
            try:
                return to_units(amount, decimals)
            except UnitError:
                raise ValueError(f"{field}: {amount} is not a whole number of {what} "
                                 f"(at most {decimals} decimal places)") from None

        units("tick_size", self.tick_size, self.price_decimals, "price units")
        lot = units("lot_size", self.lot_size, self.qty_decimals, "quantity units")
        min_qty = units("min_qty", self.min_qty or self.lot_size, self.qty_decimals, "quantity units")
        max_qty = units("max_qty", self.max_qty, self.qty_decimals, "quantity units")
        max_notional = units("max_notional", self.max_notional, self.price_decimals + self.qty_decimals,
                             "price x quantity units")
        if max_qty % lot or max_qty < min_qty:
            raise ValueError(f"max_qty: {self.max_qty} must be a multiple of lot_size and at least min_qty")
        if max_qty > MAX_QTY_CEILING:
            raise ValueError(f"max_qty: {max_qty} quantity units is above the ceiling {MAX_QTY_CEILING} "
                             f"(a day's volume must fit a long)")
        if max_notional > MAX_NOTIONAL_CEILING:
            raise ValueError(f"max_notional: {max_notional} price x quantity units is above the ceiling "
                             f"{MAX_NOTIONAL_CEILING} (a day's quote volume must fit decimal(38,0))")
        if f"{self.base}-{self.quote}" != self.symbol:
            raise ValueError(f"symbol: must be BASE-QUOTE ({self.base}-{self.quote})")
        return self

    def spec(self) -> MarketSpec:
        band_num, band_den = MarketSpec.band_fraction(self.price_band_pct)
        collar_num, collar_den = MarketSpec.band_fraction(self.collar_pct)
        return MarketSpec(
            market=self.symbol,
            tick=to_units(self.tick_size, self.price_decimals),
            lot=to_units(self.lot_size, self.qty_decimals),
            min_qty=to_units(self.min_qty or self.lot_size, self.qty_decimals),
            band_num=band_num,
            band_den=band_den,
            max_qty=to_units(self.max_qty, self.qty_decimals),
            max_notional=to_units(self.max_notional, self.price_decimals + self.qty_decimals),
            collar_num=collar_num,
            collar_den=collar_den,
            collar_interval_ms=self.collar_interval_s * 1000,
        )

    def price(self, units: int) -> Decimal:
        return from_units(units, self.price_decimals)

    def qty(self, units: int) -> Decimal:
        return from_units(units, self.qty_decimals)


class MarketRegistry:
    def __init__(self, markets: list[MarketConfig]) -> None:
        self._by_symbol = {m.symbol: m for m in markets}
        if len(self._by_symbol) != len(markets):
            raise RegistryError("duplicate market symbol in the registry")

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_symbol.values())

    def __len__(self) -> int:
        return len(self._by_symbol)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._by_symbol

    def get(self, symbol: str) -> MarketConfig:
        try:
            return self._by_symbol[symbol]
        except KeyError:
            known = ", ".join(sorted(self._by_symbol))
            raise RegistryError(f"unknown market {symbol!r} (known: {known})") from None

    def symbols(self) -> list[str]:
        return sorted(self._by_symbol)

    @classmethod
    def load(cls, path: Path) -> MarketRegistry:
        raw = read_section(path, "markets", list, "market file", "EXCHANGE_MARKETS_FILE", RegistryError)
        markets = []
        for index, entry in enumerate(raw["markets"]):
            try:
                markets.append(MarketConfig.model_validate(entry))
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                message = first["msg"].removeprefix("Value error, ")  # the model's own checks name their field
                name = entry.get("symbol", f"#{index}") if isinstance(entry, dict) else f"#{index}"
                detail = f"{where}: {message}" if where else message
                raise RegistryError(f"market file {path}: market {name}: {detail}") from None
        return cls(markets)
