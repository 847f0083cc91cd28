"""Money as a bookkeeper keeps it: an integer of minor units and a currency, never a float.

Why not a library: py-moneyed and similar hold ``Decimal`` amounts, which invite fractional cents into
stored balances; the ledger needs integers that sum exactly in SQL. What a library would add is the
currency table and rounding, which are small and written out here: ``CURRENCIES`` (ISO 4217 minor-unit
exponents of the currencies Lineside prices in) and ``Money.of`` / ``rate``, which round a ``Decimal``
price times a quantity once, half to even (banker's rounding, so a long run of roundings does not
drift one way), at the end of a computation, never in between.

    >>> Money.of("0.90", "EUR") * 3
    Money(minor=270, currency='EUR')
    >>> rate(Decimal("0.90"), Decimal(1) / 3, "EUR")   # a third of an hour at 0.90/h
    Money(minor=30, currency='EUR')
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

CURRENCIES: Final = {"EUR": 2, "USD": 2, "CNY": 2, "GBP": 2, "CHF": 2, "JPY": 0}
"""ISO 4217 codes Lineside prices in, with their minor-unit exponent (cents: 2; yen: 0)."""


class CurrencyMismatch(ValueError):
    """Two amounts in different currencies were combined; convert explicitly first."""


def _exponent(currency: str) -> int:
    try:
        return CURRENCIES[currency]
    except KeyError:
        raise ValueError(f"currency {currency!r} is not one of {sorted(CURRENCIES)}") from None


@dataclass(frozen=True, order=False)
class Money:
    """``minor`` units (cents) of ``currency``; immutable, exact, and only added to its own currency."""

    minor: int
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.minor, int) or isinstance(self.minor, bool):
            raise TypeError(f"minor units must be an int, not {type(self.minor).__name__}")
        _exponent(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @classmethod
    def of(cls, amount: str | Decimal | int, currency: str) -> Money:
        """From major units given as text or Decimal ("12.34" EUR = 1234 cents); floats are refused."""
        if isinstance(amount, float):
            raise TypeError("give amounts as str or Decimal, never float (0.1 + 0.2 != 0.3)")
        scaled = Decimal(amount).scaleb(_exponent(currency))
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{amount} {currency} has more decimals than the currency's minor unit")
        return cls(int(scaled), currency)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __mul__(self, times: int) -> Money:
        if not isinstance(times, int) or isinstance(times, bool):
            raise TypeError("multiply money by an int; for prices times quantities use rate()")
        return Money(self.minor * times, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor < other.minor

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.minor <= other.minor

    def __bool__(self) -> bool:
        return self.minor != 0

    def __str__(self) -> str:
        exponent = _exponent(self.currency)
        return f"{Decimal(self.minor).scaleb(-exponent):.{exponent}f} {self.currency}"


def rate(unit_price: Decimal, quantity: Decimal, currency: str) -> Money:
    """``unit_price`` (major units, may carry sub-cent digits) times ``quantity``, rounded once, half to even."""
    exact = (unit_price * quantity).scaleb(_exponent(currency))
    return Money(int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)), currency)


def total(amounts: list[Money], currency: str) -> Money:
    """The sum of ``amounts`` (all in ``currency``); zero when empty."""
    result = Money.zero(currency)
    for amount in amounts:
        result += amount
    return result
