"""The double-entry ledger's rules, pure: postings, balanced transactions, reversals, credit limits.

Why pure (STYLE rule 11): the rules a bookkeeper checks must be testable without a database, and the
same rules are then enforced again by the database (``ledger_store`` and migration 0005), so a bug in
one layer is caught by the other.

Sign convention, "value moves": a transaction moves value out of some accounts (negative postings)
into others (positive postings), and every transaction sums to zero in each currency. An account's
balance is the sum of its postings, seen from its holder: a tenant's ``prepaid`` balance is what it may
still spend (below zero: debt), ``revenue`` is what the platform earned, a ``voucher_funder`` account
goes negative by what its programme granted. A top-up moves value from the tenant's ``receivable``
into ``prepaid``; a charge moves it from ``prepaid`` into ``revenue``.

Corrections are never edits: ``reverse`` builds the transaction that moves the same value back.

    >>> eur = lambda cents: Money(cents, "EUR")
    >>> top_up = post("topup-1", TOP_UP, [Posting(1, eur(-500)), Posting(2, eur(500))])
    >>> [(p.account, p.amount.minor) for p in reverse(top_up).postings]
    [(1, 500), (2, -500)]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from control_plane.money import Money


class AccountKind(StrEnum):
    """What an account holds; per tenant the first four, the platform's (or a funder's) the rest.

    A tenant's ``receivable`` goes negative by what it owes (usage beyond its funds, to be invoiced);
    the platform's ``payments`` goes negative by what tenants paid in (the other side of top-ups)."""

    PREPAID = "prepaid"
    VOUCHER = "voucher"
    BANK_CREDITS = "bank_credits"
    RECEIVABLE = "receivable"
    REVENUE = "revenue"
    PAYMENTS = "payments"
    CONTRIBUTORS_PAYABLE = "contributors_payable"
    VOUCHER_FUNDER = "voucher_funder"


TOP_UP: Final = "top_up"
CHARGE: Final = "charge"
RESERVED_CHARGE: Final = "reserved_charge"
REVERSAL: Final = "reversal"

MAY_RUN_INTO_DEBT: Final = frozenset({RESERVED_CHARGE})
"""Transaction kinds that may take a prepaid balance past its credit limit. A reserved slice keeps
running when its tenant's balance runs out (stopping a factory line is worse than a debt), so its
charges are recorded as debt, to be settled by the next invoice; every other charge is refused."""


class LedgerError(ValueError):
    """A transaction the ledger refuses; nothing of it is recorded."""


class Unbalanced(LedgerError):
    """A transaction's postings do not sum to zero in some currency."""


class OverCreditLimit(LedgerError):
    """A charge would take a prepaid balance below minus its credit limit."""


@dataclass(frozen=True)
class Posting:
    """``amount`` into ``account`` (an account id; negative: out of it)."""

    account: int
    amount: Money


@dataclass(frozen=True)
class Transaction:
    """Postings that happen together, named by the caller's idempotency ``key``."""

    key: str
    kind: str
    postings: tuple[Posting, ...]
    memo: str = ""
    reverses: str | None = None  # the key of the transaction this one reverses


def imbalance(postings: Iterable[Posting]) -> dict[str, int]:
    """Per currency, the minor units by which ``postings`` fail to sum to zero (empty: balanced)."""
    sums: dict[str, int] = defaultdict(int)
    for posting in postings:
        sums[posting.amount.currency] += posting.amount.minor
    return {currency: total for currency, total in sums.items() if total}


def post(key: str, kind: str, postings: Iterable[Posting], memo: str = "", reverses: str | None = None) -> Transaction:
    """A transaction of ``postings``, refused unless they balance in every currency."""
    if not key:
        raise LedgerError("a transaction needs an idempotency key chosen by its caller")
    entries = tuple(postings)
    if not entries:
        raise LedgerError(f"transaction {key!r} has no postings")
    off = imbalance(entries)
    if off:
        raise Unbalanced(f"transaction {key!r} does not balance: off by {off} minor units")
    return Transaction(key, kind, entries, memo, reverses)


def reverse(transaction: Transaction, key: str | None = None) -> Transaction:
    """The transaction that moves ``transaction``'s value back (key defaults to ``reversal:<key>``)."""
    return post(
        key or f"reversal:{transaction.key}",
        REVERSAL,
        [Posting(p.account, -p.amount) for p in transaction.postings],
        memo=f"reverses {transaction.key}",
        reverses=transaction.key,
    )


def balances(transactions: Iterable[Transaction]) -> dict[tuple[int, str], int]:
    """Each (account, currency)'s balance in minor units: the sum of its postings."""
    result: dict[tuple[int, str], int] = defaultdict(int)
    for transaction in transactions:
        for posting in transaction.postings:
            result[posting.account, posting.amount.currency] += posting.amount.minor
    return dict(result)


def net_change(transaction: Transaction) -> dict[int, Money]:
    """What ``transaction`` adds to each account it touches (an account holds one currency)."""
    result: dict[int, Money] = {}
    for posting in transaction.postings:
        before = result.get(posting.account, Money.zero(posting.amount.currency))
        result[posting.account] = before + posting.amount
    return result


def check_credit(
    transaction: Transaction,
    prepaid_balances: Mapping[int, Money],
    credit_limits: Mapping[int, int | None],
) -> None:
    """Refuse ``transaction`` if it takes a prepaid account (those in ``prepaid_balances``, with their
    balance before it) below minus its credit limit (minor units; ``None``: no credit). Accounts it
    does not lower are never refused, and kinds in ``MAY_RUN_INTO_DEBT`` are never refused."""
    if transaction.kind in MAY_RUN_INTO_DEBT:
        return
    for account, change in net_change(transaction).items():
        if account not in prepaid_balances or change.minor >= 0:
            continue
        after = prepaid_balances[account] + change
        floor = -(credit_limits.get(account) or 0)
        if after.minor < floor:
            raise OverCreditLimit(
                f"transaction {transaction.key!r} would take prepaid account {account} to {after}, "
                f"below its credit limit of {Money(-floor, after.currency)}"
            )
