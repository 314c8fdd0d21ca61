"""Markets: the static description of what trades and in which integer units.

Invariants:
- A price on the wire and in engine state is an integer count of *price units*, where one unit is
  ``10**-price_decimals`` of the quote asset. A quantity is an integer count of *quantity units*,
  one unit being ``10**-qty_decimals`` of the base asset. No floats anywhere.
- ``tick`` and ``lot`` are positive integers in those units; a valid price is a multiple of
  ``tick`` and a valid quantity a multiple of ``lot`` (the engine checks, so that a producer
  sending an off-tick price gets a coded reject instead of a silent rounding).
- The price band is a rational percentage ``band_num / band_den`` (``None`` = no band), so a
  band such as 2.5 % is exact. The collar (``collar_num / collar_den``, ``None`` = none) bounds
  both sides of every limit price around a reference that moves once per ``collar_interval_ms``
  of command time, so that a band following each last trade cannot be walked away.
- ``max_qty`` and ``max_notional`` (``None`` = unbounded, as in conformance scenarios) bound an
  order's quantity and a limit order's price x quantity; the market registry always sets them,
  so that every total derived from accepted orders fits its type (``docs/matching-rules.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

LONG_MAX = 2**63 - 1  # Avro long: every quantity, price and volume on the wire
DECIMAL38_MAX = 10**38 - 1  # Avro decimal(38, 0): quote volumes and token amounts
# Commands one market's engine could take in a day at a ceiling above its measured speed
# (~300,000 commands/s on one core): 400,000/s. One command's fills add up to at most its own
# quantity, so a day's base volume is at most max_qty times this.
COMMANDS_PER_DAY_CEILING = 86_400 * 400_000
# The largest max_qty a market may set: a candle of a day cannot overflow its long volume, and a
# price level would need more than COMMANDS_PER_DAY_CEILING resting orders to overflow its long
# total (terabytes of book: more than any engine holds).
MAX_QTY_CEILING = LONG_MAX // COMMANDS_PER_DAY_CEILING
# The largest max_notional (price units x quantity units): a day's quote volume stays inside
# decimal(38, 0); also the most one trade can be worth (a trade is at most its maker's notional).
MAX_NOTIONAL_CEILING = DECIMAL38_MAX // COMMANDS_PER_DAY_CEILING


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
    max_qty: int | None = None  # quantity units (None: unbounded)
    max_notional: int | None = None  # price units x quantity units (None: unbounded)
    collar_num: int | None = None  # collar percentage numerator (None: no collar)
    collar_den: int = 1
    collar_interval_ms: int = 60_000  # how often the collar's reference price moves

    def __post_init__(self) -> None:
        if self.tick <= 0 or self.lot <= 0:
            raise ValueError(f"{self.market}: tick and lot must be positive integers")
        if self.min_qty <= 0:
            raise ValueError(f"{self.market}: min_qty must be positive")
        if self.band_num is not None and (self.band_num < 0 or self.band_den <= 0):
            raise ValueError(f"{self.market}: price band must be a non-negative percentage")
        if self.collar_num is not None and (self.collar_num < 0 or self.collar_den <= 0
                                            or self.collar_num >= 100 * self.collar_den):
            raise ValueError(f"{self.market}: collar must be a percentage from 0 to under 100")
        if self.collar_interval_ms <= 0:
            raise ValueError(f"{self.market}: collar interval must be positive")
        if self.max_qty is not None and self.max_qty < self.min_qty:
            raise ValueError(f"{self.market}: max_qty must be at least min_qty")
        if self.max_notional is not None and self.max_notional <= 0:
            raise ValueError(f"{self.market}: max_notional must be positive")

    @staticmethod
    def band_fraction(pct: Decimal | str | int | None) -> tuple[int | None, int]:
        """A percentage (``5``, ``"2.5"``) as an exact ``(numerator, denominator)`` pair."""
        if pct is None:
            return None, 1
        frac = Fraction(Decimal(str(pct)))
        return frac.numerator, frac.denominator
