"""The ledger's tables: accounts, journal transactions and their entries (rules in ``control_plane.ledger``).

Why these shapes: an entry's amount is a BIGINT of minor units (a float cannot hold money, and 32 bits
of cents end at 21 million euros); a transaction's idempotency key is unique, so a retried write finds
the stored transaction instead of posting twice; there is no balance column, since a balance is the sum
of an account's entries. Migration 0005 adds what a model cannot say: triggers that refuse UPDATE and
DELETE of journal rows, and on PostgreSQL a deferred check that each transaction balances at commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger
from sqlmodel import Field, SQLModel

from control_plane.models._common import utcnow


class Account(SQLModel, table=True):
    """A tenant's account (``tenant_id`` set) or the platform's (``tenant_id`` None), in one currency."""

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int | None = Field(default=None, foreign_key="tenant.id", index=True)
    kind: str = Field(max_length=32)  # a ledger.AccountKind
    name: str = Field(default="", max_length=100)  # e.g. the voucher programme a funder account belongs to
    currency: str = Field(max_length=3)
    credit_limit_minor: int | None = Field(default=None, sa_type=BigInteger)  # prepaid only; None: no credit
    created_at: datetime = Field(default_factory=utcnow)


class JournalTransaction(SQLModel, table=True):
    """Entries posted together; never changed, corrected by a reversing transaction (``reverses_id``)."""

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(max_length=200, unique=True, index=True)
    kind: str = Field(max_length=32)
    memo: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow)
    reverses_id: int | None = Field(default=None, foreign_key="journaltransaction.id")


class JournalEntry(SQLModel, table=True):
    """``amount_minor`` of ``currency`` into ``account_id`` (negative: out of it)."""

    id: int | None = Field(default=None, primary_key=True)
    transaction_id: int = Field(foreign_key="journaltransaction.id", index=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    amount_minor: int = Field(sa_type=BigInteger)
    currency: str = Field(max_length=3)
