"""Money: integer minor units with a currency; exact sums, one rounding, no floats."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.money import CurrencyMismatch, Money, rate, total


def test_amounts_are_parsed_exactly_and_floats_are_refused() -> None:
    assert Money.of("12.34", "EUR") == Money(1234, "EUR")
    assert Money.of("1500", "JPY") == Money(1500, "JPY")
    with pytest.raises(TypeError, match="never float"):
        Money.of(0.1, "EUR")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more decimals"):
        Money.of("0.001", "EUR")
    with pytest.raises(ValueError, match="not one of"):
        Money.of("1", "XXX")


def test_currencies_never_mix() -> None:
    with pytest.raises(CurrencyMismatch):
        Money(1, "EUR") + Money(1, "USD")


def test_a_price_times_a_quantity_is_rounded_once_half_to_even() -> None:
    assert rate(Decimal("0.90"), Decimal(1) / 3, "EUR") == Money(30, "EUR")
    assert rate(Decimal("0.005"), Decimal(1), "EUR") == Money(0, "EUR")  # half to even: 0.5 cent -> 0
    assert rate(Decimal("0.015"), Decimal(1), "EUR") == Money(2, "EUR")  # 1.5 cents -> 2
    assert str(Money(-1234, "EUR")) == "-12.34 EUR"


@given(st.lists(st.integers(-(10**12), 10**12), max_size=50))
def test_sums_are_exact(minors: list[int]) -> None:
    assert total([Money(m, "EUR") for m in minors], "EUR") == Money(sum(minors), "EUR")
