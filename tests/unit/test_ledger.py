"""The pure ledger: balanced transactions only, reversals that undo, balances that are sums of postings."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane import ledger
from control_plane.ledger import CHARGE, RESERVED_CHARGE, TOP_UP, Posting, Transaction, post, reverse
from control_plane.money import Money

PREPAID, RECEIVABLE, REVENUE = 1, 2, 3


def eur(cents: int) -> Money:
    return Money(cents, "EUR")


def test_docstring_examples_run() -> None:
    assert doctest.testmod(ledger).failed == 0


def test_an_unbalanced_transaction_is_refused_per_currency() -> None:
    with pytest.raises(ledger.Unbalanced):
        post("k", CHARGE, [Posting(PREPAID, eur(-100)), Posting(REVENUE, eur(99))])
    with pytest.raises(ledger.Unbalanced):  # balances in total, not per currency
        post("k", CHARGE, [Posting(PREPAID, eur(-100)), Posting(REVENUE, Money(100, "USD"))])
    with pytest.raises(ledger.LedgerError):
        post("k", CHARGE, [])
    with pytest.raises(ledger.LedgerError):
        post("", CHARGE, [Posting(PREPAID, eur(0))])


def test_the_credit_limit_refuses_a_charge_unless_its_kind_may_run_into_debt() -> None:
    charge = post("c", CHARGE, [Posting(PREPAID, eur(-600)), Posting(REVENUE, eur(600))])
    ledger.check_credit(charge, {PREPAID: eur(100)}, {PREPAID: 500})  # to -5.00: within the limit
    with pytest.raises(ledger.OverCreditLimit):
        ledger.check_credit(charge, {PREPAID: eur(99)}, {PREPAID: 500})
    with pytest.raises(ledger.OverCreditLimit):
        ledger.check_credit(charge, {PREPAID: eur(599)}, {PREPAID: None})  # no limit: no credit
    reserved = post("r", RESERVED_CHARGE, charge.postings)
    ledger.check_credit(reserved, {PREPAID: eur(0)}, {PREPAID: 0})  # recorded as debt
    refund = reverse(charge)
    ledger.check_credit(refund, {PREPAID: eur(-10_000)}, {PREPAID: 0})  # raising a balance is never refused


amounts = st.integers(min_value=1, max_value=10**12)
step = st.one_of(
    st.tuples(st.just("top_up"), amounts),
    st.tuples(st.just("charge"), amounts),
    st.tuples(st.just("reverse"), st.integers(min_value=0, max_value=10**6)),
)


@given(st.lists(step, max_size=40))
def test_any_sequence_of_postings_and_reversals_balances(steps: list[tuple[str, int]]) -> None:
    journal: list[Transaction] = []
    expected: dict[int, int] = {}
    for n, (what, value) in enumerate(steps):
        if what == "top_up":
            t = post(f"t{n}", TOP_UP, [Posting(RECEIVABLE, eur(-value)), Posting(PREPAID, eur(value))])
        elif what == "charge":
            t = post(f"c{n}", CHARGE, [Posting(PREPAID, eur(-value)), Posting(REVENUE, eur(value))])
        elif journal:
            t = reverse(journal[value % len(journal)], key=f"r{n}")
        else:
            continue
        journal.append(t)
        for p in t.postings:
            expected[p.account] = expected.get(p.account, 0) + p.amount.minor
    assert all(not ledger.imbalance(t.postings) for t in journal)
    assert ledger.balances(journal) == {(a, "EUR"): v for a, v in expected.items()}
    assert sum(expected.values()) == 0


@given(st.lists(st.tuples(st.sampled_from([PREPAID, RECEIVABLE, REVENUE]), st.sampled_from(["EUR", "JPY"]),
                          st.integers(-10**9, 10**9)), min_size=1, max_size=8))  # fmt: skip
def test_reversal_of_a_reversal_restores_the_postings(legs: list[tuple[int, str, int]]) -> None:
    postings = [Posting(a, Money(v, c)) for a, c, v in legs]
    postings += [Posting(REVENUE, Money(-total, c)) for c, total in ledger.imbalance(postings).items()]
    original = post("o", CHARGE, postings)
    twice = reverse(reverse(original))
    assert twice.postings == original.postings
    assert ledger.balances([original, reverse(original)]) == {k: 0 for k in ledger.balances([original])}
