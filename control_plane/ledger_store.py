"""The ledger's write path: ``ledger`` transactions recorded in the database once, balances read back.

Why a separate module: ``control_plane.ledger`` stays pure; this is the one place journal rows are
written, so the checks that need stored state live here: the idempotency key (a retry with the same
key and postings returns the stored transaction, with other postings it is refused), the accounts'
currencies, the prepaid credit limit, and the balance SUM in SQL before the caller commits (what the
PostgreSQL deferred trigger of migration 0005 checks again at commit; on SQLite this is the check).

The caller commits. Two writers with one new key race on the key's unique index: the loser's flush
fails (``IntegrityError``, or "database is locked" on SQLite); ``record_committed`` retries, and the
retry finds the winner's transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import Engine, func, insert, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from control_plane import ledger
from control_plane.ledger import AccountKind, LedgerError, Posting, Transaction
from control_plane.models._common import utcnow
from control_plane.models.ledger import Account, JournalEntry, JournalTransaction
from control_plane.money import Money

CHUNK = 500
"""Ids per IN (...) list, small enough for any database."""


class IdempotencyConflict(LedgerError):
    """A key already names a stored transaction with other postings: the caller reused a key."""


def open_account(
    session: Session,
    kind: AccountKind,
    currency: str,
    tenant_id: int | None = None,
    name: str = "",
    credit_limit_minor: int | None = None,
) -> Account:
    """A new account (flushed, so it has an id); ``credit_limit_minor`` only for prepaid accounts."""
    Money.zero(currency)  # refuses an unknown currency
    if credit_limit_minor is not None and (kind != AccountKind.PREPAID or credit_limit_minor < 0):
        raise LedgerError("a credit limit is a non-negative number of minor units, on a prepaid account")
    account = Account(tenant_id=tenant_id, kind=kind, name=name, currency=currency,
                      credit_limit_minor=credit_limit_minor)  # fmt: skip
    session.add(account)
    session.flush()
    return account


def stored_postings(session: Session, transaction_id: int) -> tuple[Posting, ...]:
    """The postings of a stored transaction, in the order they were written."""
    entries = session.exec(
        select(JournalEntry).where(JournalEntry.transaction_id == transaction_id).order_by(col(JournalEntry.id))
    ).all()
    return tuple(Posting(e.account_id, Money(e.amount_minor, e.currency)) for e in entries)


def find(session: Session, key: str) -> JournalTransaction | None:
    return session.exec(select(JournalTransaction).where(JournalTransaction.idempotency_key == key)).first()


def record(session: Session, transaction: Transaction) -> JournalTransaction:
    """Write ``transaction`` (built by ``ledger.post``/``reverse``) unless its key is stored already."""
    stored = find(session, transaction.key)
    if stored is not None:
        assert stored.id is not None
        if sorted(stored_postings(session, stored.id), key=repr) != sorted(transaction.postings, key=repr):
            raise IdempotencyConflict(f"key {transaction.key!r} already names a transaction with other postings")
        return stored
    if ledger.imbalance(transaction.postings):
        raise ledger.Unbalanced(f"transaction {transaction.key!r} does not balance")
    ids = sorted({p.account for p in transaction.postings})
    # Lock the accounts (PostgreSQL; SQLite serialises writers) so two charges cannot both pass the limit.
    accounts = {
        a.id: a
        for a in session.exec(
            select(Account).where(col(Account.id).in_(ids)).order_by(col(Account.id)).with_for_update()
        )
    }
    for posting in transaction.postings:
        account = accounts.get(posting.account)
        if account is None:
            raise LedgerError(f"transaction {transaction.key!r} posts to unknown account {posting.account}")
        if account.currency != posting.amount.currency:
            raise LedgerError(f"account {account.id} holds {account.currency}, not {posting.amount.currency}")
    prepaid = {i: balance(session, a) for i, a in accounts.items() if a.kind == AccountKind.PREPAID and i is not None}
    ledger.check_credit(transaction, prepaid, {i: a.credit_limit_minor for i, a in accounts.items() if i is not None})
    reverses = find(session, transaction.reverses) if transaction.reverses else None
    if transaction.reverses and reverses is None:
        raise LedgerError(f"transaction {transaction.key!r} reverses {transaction.reverses!r}, which is not stored")
    row = JournalTransaction(idempotency_key=transaction.key, kind=transaction.kind, memo=transaction.memo,
                             reverses_id=reverses.id if reverses else None)  # fmt: skip
    session.add(row)
    session.flush()
    assert row.id is not None
    for posting in transaction.postings:
        session.add(JournalEntry(transaction_id=row.id, account_id=posting.account,
                                 amount_minor=posting.amount.minor, currency=posting.amount.currency))  # fmt: skip
    session.flush()
    check_balanced(session, row.id)
    return row


def record_many(session: Session, transactions: Sequence[Transaction]) -> list[int]:
    """``record`` for many transactions (a rating batch), in order; their stored ids. The same checks
    (idempotency key, balance, accounts' currencies, credit limits in order, the SQL balance check)
    in a handful of queries instead of six per transaction. A reversal goes through ``record``."""
    ids: list[int | None] = [None] * len(transactions)
    stored = _stored(session, [t.key for t in transactions])
    new: dict[str, int] = {}  # key -> position of its first new transaction
    for i, transaction in enumerate(transactions):
        if transaction.reverses:
            ids[i] = record(session, transaction).id
        elif transaction.key in stored:
            if sorted(stored[transaction.key][1], key=repr) != sorted(transaction.postings, key=repr):
                raise IdempotencyConflict(f"key {transaction.key!r} already names a transaction with other postings")
            ids[i] = stored[transaction.key][0]
        elif transaction.key in new:
            if sorted(transactions[new[transaction.key]].postings, key=repr) != sorted(transaction.postings, key=repr):
                raise IdempotencyConflict(f"key {transaction.key!r} already names a transaction with other postings")
        else:
            if ledger.imbalance(transaction.postings):
                raise ledger.Unbalanced(f"transaction {transaction.key!r} does not balance")
            new[transaction.key] = i
    if new:
        fresh = [transactions[i] for i in new.values()]
        _check_accounts(session, fresh)
        rows = _insert(session, fresh)
        for key, position in new.items():
            ids[position] = rows[key]
        for i, transaction in enumerate(transactions):
            if ids[i] is None:
                ids[i] = rows[transaction.key]
    assert all(i is not None for i in ids)
    return [i for i in ids if i is not None]


def _stored(session: Session, keys: list[str]) -> dict[str, tuple[int, tuple[Posting, ...]]]:
    """Transactions stored under any of ``keys``, with their postings."""
    found: dict[str, tuple[int, tuple[Posting, ...]]] = {}
    unique = sorted(set(keys))
    for start in range(0, len(unique), CHUNK):
        rows = session.exec(
            select(JournalTransaction.id, JournalTransaction.idempotency_key).where(
                col(JournalTransaction.idempotency_key).in_(unique[start : start + CHUNK])
            )
        ).all()
        for row_id, key in rows:
            assert row_id is not None
            found[key] = (row_id, stored_postings(session, row_id))
    return found


def _check_accounts(session: Session, transactions: list[Transaction]) -> None:
    """Lock the accounts posted to, check their currencies, and the prepaid credit limits in order."""
    ids = sorted({p.account for t in transactions for p in t.postings})
    accounts: dict[int, Account] = {}
    for start in range(0, len(ids), CHUNK):
        rows = session.exec(
            select(Account)
            .where(col(Account.id).in_(ids[start : start + CHUNK]))
            .order_by(col(Account.id))
            .with_for_update()
        )
        accounts |= {a.id: a for a in rows if a.id is not None}
    for transaction in transactions:
        for posting in transaction.postings:
            account = accounts.get(posting.account)
            if account is None:
                raise LedgerError(f"transaction {transaction.key!r} posts to unknown account {posting.account}")
            if account.currency != posting.amount.currency:
                raise LedgerError(f"account {account.id} holds {account.currency}, not {posting.amount.currency}")
    prepaid_ids = [i for i, a in accounts.items() if a.kind == AccountKind.PREPAID]
    sums = dict(
        session.exec(
            select(JournalEntry.account_id, func.sum(JournalEntry.amount_minor))
            .where(col(JournalEntry.account_id).in_(prepaid_ids))
            .group_by(col(JournalEntry.account_id))
        ).all()
    ) if prepaid_ids else {}  # fmt: skip
    balances = {i: Money(int(sums.get(i, 0) or 0), accounts[i].currency) for i in prepaid_ids}
    limits = {i: a.credit_limit_minor for i, a in accounts.items()}
    for transaction in transactions:
        mine = {p.account for p in transaction.postings}
        ledger.check_credit(transaction, {i: b for i, b in balances.items() if i in mine}, limits)
        for account_id, change in ledger.net_change(transaction).items():
            if account_id in balances:
                balances[account_id] = balances[account_id] + change


def _insert(session: Session, transactions: list[Transaction]) -> dict[str, int]:
    """Write the transactions and their entries; check each balances in SQL; their ids by key."""
    session.flush()
    now = utcnow()
    heads = [{"idempotency_key": t.key, "kind": t.kind, "memo": t.memo, "created_at": now, "reverses_id": None}
             for t in transactions]  # fmt: skip
    table = JournalTransaction.__table__  # type: ignore[attr-defined]
    returned = session.connection().execute(
        insert(table).returning(table.c.id, table.c.idempotency_key, sort_by_parameter_order=True), heads
    )
    rows = {key: int(row_id) for row_id, key in returned.all()}
    entries = [{"transaction_id": rows[t.key], "account_id": p.account, "amount_minor": p.amount.minor,
                "currency": p.amount.currency} for t in transactions for p in t.postings]  # fmt: skip
    session.connection().execute(insert(JournalEntry.__table__), entries)  # type: ignore[attr-defined]
    ids = sorted(rows.values())
    for start in range(0, len(ids), CHUNK):
        off = session.execute(
            select(JournalEntry.transaction_id, JournalEntry.currency, func.sum(JournalEntry.amount_minor))
            .where(col(JournalEntry.transaction_id).in_(ids[start : start + CHUNK]))
            .group_by(col(JournalEntry.transaction_id), col(JournalEntry.currency))
            .having(func.sum(JournalEntry.amount_minor) != 0)
        ).all()
        if off:
            raise ledger.Unbalanced(f"journal transactions do not balance: {[tuple(r) for r in off][:5]}")
    return rows


def check_balanced(session: Session, transaction_id: int) -> None:
    """Refuse (``ledger.Unbalanced``) a stored transaction whose entries do not sum to zero per currency."""
    off = session.execute(
        text(
            "SELECT currency, SUM(amount_minor) FROM journalentry WHERE transaction_id = :id "
            "GROUP BY currency HAVING SUM(amount_minor) <> 0"
        ),
        {"id": transaction_id},
    ).all()
    if off:
        raise ledger.Unbalanced(f"journal transaction {transaction_id} does not balance: {dict(off)}")


def balance(session: Session, account: Account) -> Money:
    """The account's balance: the sum of its entries (there is no stored balance to drift)."""
    total = session.exec(
        select(func.coalesce(func.sum(JournalEntry.amount_minor), 0)).where(JournalEntry.account_id == account.id)
    ).one()
    return Money(int(total), account.currency)


def record_committed(engine: Engine, transaction: Transaction, attempts: int = 20) -> int:
    """Record and commit ``transaction`` in a session of its own, retrying lost races; its stored id."""
    for attempt in range(attempts):
        try:
            with Session(engine) as session:
                row = record(session, transaction)
                session.commit()
                assert row.id is not None
                return row.id
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")
