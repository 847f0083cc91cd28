"""The compute supermarket's tables (issue 13): products and their price versions, leases, rated charges,
what each tenant's money is set to (currency, budget, hold), voucher programmes, and invoices.

Why these shapes:
- A price version's ``terms`` is the JSON of ``pricing.CapacityTerms``/``UsageTerms``/``SubscriptionTerms``
  (prices as decimal strings, never floats); versions are only added, never changed, so a lease pins one
  by id and a later price cannot reach back into it.
- A ``Lease`` ties a slice to a product and the price version in force when it was bought; changing a
  lease ends it (``ends_at``) and starts another, so every usage record falls under exactly one lease.
- A ``Charge`` is one rated line, posted to the ledger by one journal transaction; ``ChargedUsage`` has
  one row per usage record key (its primary key), so the database itself refuses to bill a record twice.
- ``Invoice`` rows and their ``InvoicedCharge`` links are written once (migration 0007's triggers refuse
  UPDATE and DELETE); a charge can be invoiced only once (its primary key), and a late charge for a closed
  month lands on the next invoice as an adjustment.
Amounts are BIGINT minor units with a currency (``control_plane.money``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import StringConstraints
from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from control_plane.models._common import Input, RowId, utcnow
from control_plane.pricing import UnitKind


class Product(SQLModel, table=True):
    """A standard capacity product of a site, e.g. "quarter GPU, L4-class, plant-north" (``pricing.Product``)."""

    id: int | None = Field(default=None, primary_key=True)
    sku: str = Field(max_length=64, unique=True, index=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    name: str = Field(max_length=200)
    hardware_class: str = Field(max_length=100)
    unit: str = Field(max_length=16)  # pricing.UnitKind
    active: bool = True  # inactive: no new leases; running leases keep their price
    created_at: datetime = Field(default_factory=utcnow)


class ProductPrice(SQLModel, table=True):
    """One price version of a product (``pricing.PriceVersion``); only ever added."""

    __table_args__ = (UniqueConstraint("product_id", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    product_id: int = Field(foreign_key="product.id", index=True)
    version: int
    effective_from: date
    currency: str = Field(max_length=3)
    terms: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Lease(SQLModel, table=True):
    """A slice rented under a product at a pinned price version, over ``[starts_at, ends_at)``."""

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    slice_id: int = Field(foreign_key="slice.id", index=True)
    product_id: int = Field(foreign_key="product.id", index=True)
    price_id: int = Field(foreign_key="productprice.id")
    starts_at: datetime  # on a minute boundary, like every usage record
    ends_at: datetime | None = None  # None: running
    bought_by: int | None = Field(default=None, foreign_key="user.id")
    created_at: datetime = Field(default_factory=utcnow)


class Charge(SQLModel, table=True):
    """One rated line of a lease (``pricing.RatedLine``), posted by journal transaction ``transaction_id``."""

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    lease_id: int = Field(foreign_key="lease.id", index=True)
    period: date  # the billing month (its 1st) the usage fell in
    hour_start: datetime
    measure: str = Field(max_length=32)  # reserved / burst / bank / verdicts / overage / subscription_fee
    quantity: int = Field(sa_type=BigInteger)
    unit: str = Field(max_length=32)
    unit_price: str = Field(max_length=40)  # a Decimal in major units, as text
    price_per: str = Field(max_length=32)
    amount_minor: int = Field(sa_type=BigInteger)
    currency: str = Field(max_length=3)
    voucher_minor: int = Field(default=0, sa_type=BigInteger)  # of amount_minor, paid by vouchers
    credits_minor: int = Field(default=0, sa_type=BigInteger)  # of amount_minor, paid by bank credits
    transaction_id: int | None = Field(default=None, foreign_key="journaltransaction.id", unique=True)  # None: 0
    created_at: datetime = Field(default_factory=utcnow)


class ChargedUsage(SQLModel, table=True):
    """A usage record's key, rated into ``charge_id`` (None: nothing to bill, e.g. capacity under a usage or
    subscription product); the primary key makes rating a record twice impossible."""

    usage_key: str = Field(max_length=300, primary_key=True)
    charge_id: int | None = Field(default=None, foreign_key="charge.id", index=True)  # None: included, not billed


class TenantBilling(SQLModel, table=True):
    """A tenant's money settings: its currency, the monthly budget its plant manager set, and whether its
    ``burst``/``bank`` slices are held at their floor because funds, vouchers and credit ran out."""

    tenant_id: int = Field(foreign_key="tenant.id", primary_key=True)
    currency: str = Field(max_length=3)
    monthly_budget_minor: int | None = Field(default=None, sa_type=BigInteger)
    held: bool = False
    held_reason: str = Field(default="", max_length=500)
    updated_at: datetime = Field(default_factory=utcnow)


class BudgetAlert(SQLModel, table=True):
    """An alert that a tenant's spend reached ``threshold_pct`` (80, 100) of its budget in a month; once each."""

    __table_args__ = (UniqueConstraint("tenant_id", "period", "threshold_pct"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    period: date
    threshold_pct: int
    spent_minor: int = Field(sa_type=BigInteger)
    budget_minor: int = Field(sa_type=BigInteger)
    currency: str = Field(max_length=3)
    created_at: datetime = Field(default_factory=utcnow)


class VoucherProgramme(SQLModel, table=True):
    """A funder's subsidy programme: what it grants each tenant, for which products, and until when."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    funder: str = Field(max_length=200)  # e.g. "District SME compute programme"
    currency: str = Field(max_length=3)
    budget_minor: int = Field(sa_type=BigInteger)
    per_tenant_minor: int = Field(sa_type=BigInteger)
    expires_at: datetime
    product_skus: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # empty: all
    max_share_bp: int  # basis points of each charge it may pay (5000: at most 50%)
    funder_account_id: int = Field(foreign_key="account.id")
    created_at: datetime = Field(default_factory=utcnow)


class Voucher(SQLModel, table=True):
    """A code of a programme, redeemed by one tenant (then ``account_id`` is its voucher account)."""

    __table_args__ = (UniqueConstraint("programme_id", "tenant_id"),)
    id: int | None = Field(default=None, primary_key=True)
    programme_id: int = Field(foreign_key="voucherprogramme.id", index=True)
    code: str = Field(max_length=40, unique=True, index=True)
    tenant_id: int | None = Field(default=None, foreign_key="tenant.id", index=True)
    account_id: int | None = Field(default=None, foreign_key="account.id")
    redeemed_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Invoice(SQLModel, table=True):
    """A tenant's monthly invoice: numbered without gaps, written once, its lines frozen in ``lines``."""

    __table_args__ = (UniqueConstraint("tenant_id", "period"),)
    id: int | None = Field(default=None, primary_key=True)
    number: int = Field(unique=True, index=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    period: date
    currency: str = Field(max_length=3)
    subtotal_minor: int = Field(sa_type=BigInteger)
    voucher_minor: int = Field(sa_type=BigInteger)
    credits_minor: int = Field(sa_type=BigInteger)
    total_minor: int = Field(sa_type=BigInteger)
    lines: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    issued_at: datetime = Field(default_factory=utcnow)


class InvoicedCharge(SQLModel, table=True):
    """A charge on an invoice; its primary key puts every charge on one invoice at most."""

    charge_id: int = Field(foreign_key="charge.id", primary_key=True)
    invoice_id: int = Field(foreign_key="invoice.id", index=True)


# --- what callers send and get back ------------------------------------------------------------------

Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
MoneyText = Annotated[str, StringConstraints(pattern=r"^\d{1,12}(\.\d{1,6})?$", max_length=20)]
MONTH_PATTERN = r"^(000[1-9]|00[1-9]\d|0[1-9]\d{2}|[1-9]\d{3})-(0[1-9]|1[0-2])$"
"""A month, YYYY-MM, from 0001-01 on (year 0 is no date: it answered 500 before this said so)."""
"""An amount in major units as text ("12.50"); floats are refused, so no 0.1 + 0.2 reaches a bill."""


class PriceCreate(Input):
    effective_from: date = Field(description="First day (UTC) it applies; today or later (never back-dated).")
    currency: Currency = Field(description="ISO 4217 code, e.g. EUR.")
    terms: dict[str, Any] = Field(
        description="pricing.CapacityTerms, UsageTerms or SubscriptionTerms as JSON, with prices as strings "
        "(e.g. {'kind': 'capacity', 'reserved_per_hour': '0.90', 'burst_per_hour': '1.10', "
        "'bank_per_hour': '0.40', 'billed_increment_s': 60})."
    )


class ProductCreate(Input):
    sku: Sku = Field(description="Stable product code: lower-case letters, digits, '.', '_', '-'.")
    site_id: RowId = Field(description="Site whose hardware the product sells.")
    name: str = Field(min_length=1, max_length=200, description="What plant managers read, e.g. 'Quarter GPU, L4'.")
    hardware_class: str = Field(min_length=1, max_length=100, description="e.g. 'quarter GPU, L4-class' or 'CPU'.")
    unit: UnitKind = Field(description="capacity (per replica-hour), usage (per 1,000 verdicts) or subscription.")
    price: PriceCreate = Field(description="The first price version.")


class LeaseBuy(Input):
    slice_id: RowId = Field(description="Your slice to lease the product for.")
    product_id: RowId = Field(description="A product of the slice's site (GET /catalogue).")
    price_id: RowId = Field(description="The price version you were quoted (POST /leases/quote): the confirmation.")


class QuoteIn(Input):
    product_id: RowId = Field(description="A product from GET /catalogue.")
    slice_id: RowId | None = Field(default=None, description="Your slice, for examples at its replica bounds.")


class TopUpIn(Input):
    tenant_id: RowId = Field(description="The tenant that paid.")
    amount: MoneyText = Field(description="Major units received, as text, e.g. '250.00'.")
    currency: Currency = Field(description="ISO 4217 code; the tenant's billing currency.")
    reference: str = Field(min_length=1, max_length=100, description="Payment reference; a repeat is stored once.")


class CreditLimitIn(Input):
    tenant_id: RowId = Field(description="The tenant whose credit limit changes.")
    credit_limit: MoneyText = Field(description="Debt its prepaid balance may run into, major units, e.g. '500'.")


class BudgetIn(Input):
    monthly_budget: MoneyText | None = Field(description="Alerts at 80% and 100% of it each month; null: none.")
