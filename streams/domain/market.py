"""Markets: the static description of what trades and in which integer units.

Invariants:
- A price on the wire and in engine state is an integer count of *price units*, where one unit is
  ``10**-price_decimals`` of the quote asset. A quantity is an integer count of *quantity units*,
  one unit being ``10**-qty_decimals`` of the base asset. No floats anywhere.
- ``tick`` and ``lot`` are positive integers in those units; a valid price is a multiple of
  ``tick`` and a valid quantity a multiple of ``lot`` (the engine checks, so that a producer
  sending an off-tick price gets a coded reject instead of a silent rounding).
- The price band is a rational percentage ``band_num / band_den`` (``None`` = no band), so a
  band such as 2.5 % is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction


class UnitError(ValueError):
    """A decimal amount cannot be expressed exactly in the market's integer units."""


def to_units(amount: Decimal | str, decimals: int) -> int:
    """Convert a decimal amount to integer units of ``10**-decimals``; exact or ``UnitError``."""
    value = Decimal(amount)
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise UnitError(f"{amount} has more than {decimals} decimal places")
    return int(scaled)


def from_units(units: int, decimals: int) -> Decimal:
    """Integer units back to an exact decimal amount."""
    return Decimal(units).scaleb(-decimals)


def decimals_of(amount: Decimal | str) -> int:
    """Number of decimal places needed to represent ``amount`` exactly (``"0.010"`` → 2)."""
    exponent = Decimal(amount).normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """The engine's view of a market: integer tick, lot, minimum quantity and price band."""

    market: str
    tick: int
    lot: int
    min_qty: int
    band_num: int | None = None  # price band percentage numerator (None: no band)
    band_den: int = 1

    def __post_init__(self) -> None:
        if self.tick <= 0 or self.lot <= 0:
            raise ValueError(f"{self.market}: tick and lot must be positive integers")
        if self.min_qty <= 0:
            raise ValueError(f"{self.market}: min_qty must be positive")
        if self.band_num is not None and (self.band_num < 0 or self.band_den <= 0):
            raise ValueError(f"{self.market}: price band must be a non-negative percentage")

    @staticmethod
    def band_fraction(pct: Decimal | str | int | None) -> tuple[int | None, int]:
        """A percentage (``5``, ``"2.5"``) as an exact ``(numerator, denominator)`` pair."""
        if pct is None:
            return None, 1
        frac = Fraction(Decimal(str(pct)))
        return frac.numerator, frac.denominator
