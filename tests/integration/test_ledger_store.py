"""The ledger in the database, on SQLite and PostgreSQL: what the code refuses, the database refuses too.

A transaction that does not balance is refused by ``ledger``/``ledger_store``; written past them with raw
SQL, it is refused by PostgreSQL at commit (migration 0005's deferred trigger) and on SQLite by the
store's SUM check. Journal rows cannot be updated or deleted on either. A key posts once, also when
eight writers race with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, func, select

from control_plane import db, ledger, ledger_store
from control_plane.ledger import CHARGE, RESERVED_CHARGE, TOP_UP, AccountKind, Posting, Transaction, post, reverse
from control_plane.models import JournalEntry, JournalTransaction, Tenant
from control_plane.money import Money

LIMIT = 1_000  # the prepaid account's credit limit: 10.00 EUR


@dataclass
class Books:
    engine: Engine
    prepaid: int
    receivable: int
    revenue: int


def open_books(engine: Engine) -> Books:
    with Session(engine) as session:
        tenant = Tenant(slug=f"t-{uuid.uuid4().hex[:12]}", name="Factory")
        session.add(tenant)
        session.flush()
        ids = [
            ledger_store.open_account(session, kind, "EUR", tenant_id=tenant.id, credit_limit_minor=limit).id
            for kind, limit in ((AccountKind.PREPAID, LIMIT), (AccountKind.RECEIVABLE, None))
        ]
        revenue = ledger_store.open_account(session, AccountKind.REVENUE, "EUR").id
        session.commit()
    assert ids[0] and ids[1] and revenue
    return Books(engine, ids[0], ids[1], revenue)


@pytest.fixture
def books(database_url: str) -> Iterator[Books]:
    engine = db.make_engine(database_url)
    db.migrate(engine)
    yield open_books(engine)
    engine.dispose()


def eur(cents: int) -> Money:
    return Money(cents, "EUR")


def top_up(b: Books, key: str, cents: int) -> Transaction:
    return post(key, TOP_UP, [Posting(b.receivable, eur(-cents)), Posting(b.prepaid, eur(cents))])


def charge(b: Books, key: str, cents: int, kind: str = CHARGE) -> Transaction:
    return post(key, kind, [Posting(b.prepaid, eur(-cents)), Posting(b.revenue, eur(cents))])


def balance(b: Books, account: int) -> int:
    with Session(b.engine) as session:
        row = session.get(ledger_store.Account, account)
        assert row is not None
        return ledger_store.balance(session, row).minor


def stored(b: Books, prefix: str = "") -> int:
    with Session(b.engine) as session:
        query = select(func.count()).select_from(JournalTransaction)
        return session.exec(query.where(col(JournalTransaction.idempotency_key).startswith(prefix))).one()


def test_balanced_transactions_are_stored_and_balances_are_sums(books: Books) -> None:
    first = ledger_store.record_committed(books.engine, top_up(books, "top-1", 5_000))
    ledger_store.record_committed(books.engine, charge(books, "use-1", 1_234))
    ledger_store.record_committed(books.engine, reverse(charge(books, "use-1", 1_234)))
    assert (balance(books, books.prepaid), balance(books, books.revenue)) == (5_000, 0)
    assert balance(books, books.receivable) == -5_000
    with Session(books.engine) as session:
        reversal = ledger_store.find(session, "reversal:use-1")
        original = ledger_store.find(session, "use-1")
        assert reversal and original and reversal.reverses_id == original.id and original.id != first


def test_the_store_refuses_what_the_ledger_refuses(books: Books) -> None:
    lopsided = Transaction("bad", CHARGE, (Posting(books.prepaid, eur(-5)), Posting(books.revenue, eur(4))))
    with Session(books.engine) as session, pytest.raises(ledger.Unbalanced):
        ledger_store.record(session, lopsided)
    in_usd = Transaction(
        "usd", CHARGE, (Posting(books.prepaid, Money(-5, "USD")), Posting(books.revenue, Money(5, "USD")))
    )
    with Session(books.engine) as session, pytest.raises(ledger.LedgerError, match="holds EUR"):
        ledger_store.record(session, in_usd)
    assert stored(books) == 0


def test_an_unbalanced_transaction_written_with_sql_is_refused_by_the_database(books: Books) -> None:
    with Session(books.engine) as session:
        session.execute(text("INSERT INTO journaltransaction (idempotency_key, kind, memo, created_at) "
                             "VALUES ('raw', 'charge', '', CURRENT_TIMESTAMP)"))  # fmt: skip
        tid = session.execute(text("SELECT id FROM journaltransaction WHERE idempotency_key = 'raw'")).scalar_one()
        for account, cents in ((books.prepaid, -700), (books.revenue, 600)):
            session.execute(text("INSERT INTO journalentry (transaction_id, account_id, amount_minor, currency) "
                                 "VALUES (:t, :a, :m, 'EUR')"), {"t": tid, "a": account, "m": cents})  # fmt: skip
        if books.engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="does not balance"):
                session.commit()  # the deferred constraint trigger runs here
        else:
            with pytest.raises(ledger.Unbalanced):
                ledger_store.check_balanced(session, tid)  # what record runs before every commit
            session.rollback()
    assert stored(books) == 0


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE journalentry SET amount_minor = amount_minor * 2",
        "DELETE FROM journalentry",
        "UPDATE journaltransaction SET memo = 'edited'",
        "DELETE FROM journaltransaction",
    ],
)
def test_journal_rows_are_never_updated_or_deleted(books: Books, statement: str) -> None:
    ledger_store.record_committed(books.engine, top_up(books, "top", 100))
    with Session(books.engine) as session, pytest.raises(DBAPIError, match="never changed or deleted"):
        session.execute(text(statement))  # the row triggers fire before anything is written
    assert balance(books, books.prepaid) == 100 and stored(books) == 1


def test_a_key_posts_once_and_a_reused_key_is_refused(books: Books) -> None:
    ids = {ledger_store.record_committed(books.engine, top_up(books, "again", 300)) for _ in range(3)}
    assert len(ids) == 1 and balance(books, books.prepaid) == 300
    with Session(books.engine) as session, pytest.raises(ledger_store.IdempotencyConflict):
        ledger_store.record(session, top_up(books, "again", 301))


def test_eight_concurrent_writers_with_one_key_store_one_transaction(books: Books) -> None:
    with ThreadPoolExecutor(8) as pool:
        ids = list(
            pool.map(lambda _: ledger_store.record_committed(books.engine, top_up(books, "race", 700)), range(8))
        )
    assert len(set(ids)) == 1
    assert stored(books) == 1 and balance(books, books.prepaid) == 700
    with Session(books.engine) as session:
        assert len(session.exec(select(JournalEntry)).all()) == 2


def test_a_charge_past_the_credit_limit_is_refused_unless_reserved(books: Books) -> None:
    ledger_store.record_committed(books.engine, charge(books, "within", LIMIT))  # to -10.00: the limit
    with pytest.raises(ledger.OverCreditLimit):
        ledger_store.record_committed(books.engine, charge(books, "past", 1))
    ledger_store.record_committed(books.engine, charge(books, "reserved", 500, kind=RESERVED_CHARGE))
    assert balance(books, books.prepaid) == -LIMIT - 500  # a reserved slice kept running: recorded debt


operation = st.one_of(
    st.tuples(st.sampled_from(["top_up", "charge", "reserved"]), st.integers(1, 3_000)),
    st.tuples(st.sampled_from(["reverse", "rerun"]), st.integers(0, 100)),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(operation, min_size=1, max_size=12))
def test_any_run_of_top_ups_charges_reversals_and_reruns_keeps_the_books(
    books: Books, operations: list[tuple[str, int]]
) -> None:
    b = open_books(books.engine)  # fresh accounts and keys per example; the database is shared
    run = uuid.uuid4().hex[:8]
    accepted: list[Transaction] = []
    model = {b.prepaid: 0, b.receivable: 0, b.revenue: 0}
    for n, (what, value) in enumerate(operations):
        key = f"{run}-{n}"
        if what in ("reverse", "rerun"):
            if not accepted:
                continue
            chosen = accepted[value % len(accepted)]
            t = chosen if what == "rerun" else reverse(chosen, key=key)
        else:
            kind = {"top_up": TOP_UP, "charge": CHARGE, "reserved": RESERVED_CHARGE}[what]
            t = top_up(b, key, value) if kind == TOP_UP else charge(b, key, value, kind)
        change = ledger.net_change(t).get(b.prepaid, eur(0)).minor
        lowers_past = change < 0 and model[b.prepaid] + change < -LIMIT and t.kind not in ledger.MAY_RUN_INTO_DEBT
        if what != "rerun" and lowers_past:
            with pytest.raises(ledger.OverCreditLimit):
                ledger_store.record_committed(b.engine, t)
            continue
        ledger_store.record_committed(b.engine, t)
        if what != "rerun":
            accepted.append(t)
            for p in t.postings:
                model[p.account] += p.amount.minor
        assert {a: balance(b, a) for a in model} == model  # balances are the sums of entries
        in_debt = any(done.kind in ledger.MAY_RUN_INTO_DEBT for done in accepted)
        assert model[b.prepaid] >= -LIMIT or in_debt  # below the limit only by a reserved slice's debt
    assert stored(b, run) == len(accepted)  # re-runs posted nothing
    assert sum(model.values()) == 0
    with Session(b.engine) as session:
        off = session.execute(text("SELECT transaction_id, currency FROM journalentry GROUP BY transaction_id, "
                                   "currency HAVING SUM(amount_minor) <> 0")).all()  # fmt: skip
    assert off == []
