"""The compute bank's money (issue 14, section 2): each site's rule for what contributors earn, and one row
per credit earned.

Why these shapes:
- A ``BankRule`` is a version, like a price: only added, never changed (migration 0010's triggers), the
  one in force at a charge's hour decides its share; a site without one uses the settings' default.
- A ``BankCredit`` is what one contributed node earned of one rated ``bank`` charge: its share of the
  charge by the node's replica-seconds in that hour, times the rule's share. Its ``(charge_id, node_id)``
  is unique, so the database itself refuses to credit a charge twice; it is posted to the ledger by one
  journal transaction and never changed (a reversed charge earns a negative credit, also a new row).
  Tenant names never appear here: the contributor's page reads slice counts and hours from these rows.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, UniqueConstraint
from sqlmodel import Field, SQLModel

from control_plane.models._common import Input, RowId, utcnow
from control_plane.models.billing import Currency, MoneyText


class SettleAs(StrEnum):
    """How a contributor is paid: bank credits it spends on its own slices, or a payable (money owed)."""

    CREDITS = "credits"
    PAYABLE = "payable"


class BankRule(SQLModel, table=True):
    """What contributors on a site earn from ``effective_from`` on: ``share_bp`` of what bank slices paid."""

    id: int | None = Field(default=None, primary_key=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    effective_from: date
    share_bp: int  # basis points of the bank charge: 7000 = 70 %
    settle_as: SettleAs = SettleAs.CREDITS
    created_at: datetime = Field(default_factory=utcnow)


class BankRuleIn(Input):
    site_id: RowId = Field(description="The site whose contributors it pays.")
    effective_from: date = Field(description="First day it applies; never before today (no back-dating).")
    share_bp: int = Field(ge=0, le=10_000, description="Basis points of what a bank slice paid: 7000 = 70 %.")
    settle_as: SettleAs = Field(default=SettleAs.CREDITS, description="credits (spent on own slices) or payable.")


class BankRulePublic(SQLModel):
    id: int | None
    site_id: int
    effective_from: date
    share_bp: int
    settle_as: SettleAs


class BankCredit(SQLModel, table=True):
    """``amount_minor`` earned by ``owner_tenant_id`` for bank charge ``charge_id`` run on ``node_id`` (0 for
    the operator's nodes and the slice's own tenant's: every node the charge ran on has its row)."""

    __table_args__ = (UniqueConstraint("charge_id", "node_id"),)
    id: int | None = Field(default=None, primary_key=True)
    charge_id: int = Field(foreign_key="charge.id", index=True)
    node_id: int = Field(foreign_key="node.id", index=True)
    owner_tenant_id: int | None = Field(default=None, foreign_key="tenant.id", index=True)  # None: the operator
    slice_id: int = Field(foreign_key="slice.id")
    period: date  # the billing month of the charge
    hour_start: datetime
    replica_seconds: int = Field(sa_type=BigInteger)  # the node's part of the slice's hour
    share_bp: int  # the rule's share that applied (0: the node earns nothing from this slice)
    amount_minor: int = Field(sa_type=BigInteger)
    currency: str = Field(max_length=3)
    settle_as: SettleAs
    transaction_id: int | None = Field(default=None, foreign_key="journaltransaction.id", unique=True)  # None: 0
    created_at: datetime = Field(default_factory=utcnow)


class PayoutIn(Input):
    amount: MoneyText = Field(description="Major units of bank credits to turn into a payable, e.g. '120.50'.")
    currency: Currency = Field(description="ISO 4217 code of the credits.")
    reference: str = Field(min_length=1, max_length=100, description="Idempotency: the same reference pays once.")
