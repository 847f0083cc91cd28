"""billing: the catalogue, leases, charges, budgets, voucher programmes and invoices (issue 13)

Data: the float ``slice.price_per_replica_hour`` becomes a product per site and price, priced in
integer-safe decimal text (reserved = burst = the old price, bank = half), and each slice gets a lease of
it from its creation (a deleted slice's lease ends at its last update); then the column is dropped. The
currency is EUR, the settings' default, since the old field named none.

Triggers: charges, charged usage keys, price versions, invoices and their charge links are written once;
both databases refuse UPDATE and DELETE of them (PostgreSQL reuses 0005's ``ledger_refuse_change``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budgetalert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("threshold_pct", sa.Integer(), nullable=False),
        sa.Column("spent_minor", sa.BigInteger(), nullable=False),
        sa.Column("budget_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "period", "threshold_pct"),
    )
    with op.batch_alter_table("budgetalert", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budgetalert_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "invoice",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("subtotal_minor", sa.BigInteger(), nullable=False),
        sa.Column("voucher_minor", sa.BigInteger(), nullable=False),
        sa.Column("credits_minor", sa.BigInteger(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("issued_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "period"),
    )
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invoice_number"), ["number"], unique=True)
        batch_op.create_index(batch_op.f("ix_invoice_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "product",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sku", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("hardware_class", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("unit", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["site.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("product", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_product_site_id"), ["site_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_product_sku"), ["sku"], unique=True)

    op.create_table(
        "tenantbilling",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("monthly_budget_minor", sa.BigInteger(), nullable=True),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.Column("held_reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
        ),
        sa.PrimaryKeyConstraint("tenant_id"),
    )
    op.create_table(
        "productprice",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["product.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("product_id", "version"),
    )
    with op.batch_alter_table("productprice", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_productprice_product_id"), ["product_id"], unique=False)

    op.create_table(
        "voucherprogramme",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("funder", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("budget_minor", sa.BigInteger(), nullable=False),
        sa.Column("per_tenant_minor", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("product_skus", sa.JSON(), nullable=False),
        sa.Column("max_share_bp", sa.Integer(), nullable=False),
        sa.Column("funder_account_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["funder_account_id"],
            ["account.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "lease",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("slice_id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("price_id", sa.Integer(), nullable=False),
        sa.Column("starts_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("ends_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("bought_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bought_by"],
            ["user.id"],
        ),
        sa.ForeignKeyConstraint(
            ["price_id"],
            ["productprice.id"],
        ),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["product.id"],
        ),
        sa.ForeignKeyConstraint(
            ["slice_id"],
            ["slice.id"],
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("lease", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lease_product_id"), ["product_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_lease_slice_id"), ["slice_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_lease_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "voucher",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("programme_id", sa.Integer(), nullable=False),
        sa.Column("code", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("redeemed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
        ),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["voucherprogramme.id"],
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("programme_id", "tenant_id"),
    )
    with op.batch_alter_table("voucher", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_voucher_code"), ["code"], unique=True)
        batch_op.create_index(batch_op.f("ix_voucher_programme_id"), ["programme_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_voucher_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "charge",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("lease_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("hour_start", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("measure", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("unit", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("unit_price", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("price_per", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("voucher_minor", sa.BigInteger(), nullable=False),
        sa.Column("credits_minor", sa.BigInteger(), nullable=False),
        sa.Column("transaction_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lease_id"],
            ["lease.id"],
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["journaltransaction.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("transaction_id"),
    )
    with op.batch_alter_table("charge", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_charge_lease_id"), ["lease_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_charge_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "chargedusage",
        sa.Column("usage_key", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column("charge_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["charge_id"],
            ["charge.id"],
        ),
        sa.PrimaryKeyConstraint("usage_key"),
    )
    with op.batch_alter_table("chargedusage", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_chargedusage_charge_id"), ["charge_id"], unique=False)

    op.create_table(
        "invoicedcharge",
        sa.Column("charge_id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["charge_id"],
            ["charge.id"],
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoice.id"],
        ),
        sa.PrimaryKeyConstraint("charge_id"),
    )
    with op.batch_alter_table("invoicedcharge", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invoicedcharge_invoice_id"), ["invoice_id"], unique=False)

    if op.get_bind().dialect.name == "postgresql":  # ScaleKind.BILLING: a slice held at its floor, or released
        op.execute("ALTER TYPE scalekind ADD VALUE IF NOT EXISTS 'BILLING'")
    _price_slices()
    with op.batch_alter_table("slice", schema=None) as batch_op:
        batch_op.drop_column("price_per_replica_hour")
    _append_only()


APPEND_ONLY = ("charge", "chargedusage", "productprice", "invoice", "invoicedcharge")
DEFAULT_PRICE = Decimal("0.90")


def _append_only() -> None:
    for table in APPEND_ONLY:
        if op.get_bind().dialect.name == "postgresql":
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
            )
            continue
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} BEGIN "
                f"SELECT RAISE(ABORT, 'billing rows in {table} are written once; post a correction'); END"
            )


def _terms(price: Decimal) -> dict[str, str]:
    bank = (price / 2).quantize(Decimal("0.0001"))
    if price == 0:  # nothing is cheaper than free: keep bank free and the others at a negligible price
        return {
            "kind": "capacity",
            "reserved_per_hour": "0.00001",
            "burst_per_hour": "0.00001",
            "bank_per_hour": "0",
            "billed_increment_s": 60,
        }
    return {
        "kind": "capacity",
        "reserved_per_hour": str(price),
        "burst_per_hour": str(price),
        "bank_per_hour": str(bank),
        "billed_increment_s": 60,
    }


def _price_slices() -> None:
    conn = op.get_bind()
    now = datetime.now(UTC)
    slices = conn.execute(
        sa.text(
            "SELECT id, tenant_id, site_id, price_per_replica_hour, status, created_at, updated_at "
            "FROM slice ORDER BY id"
        )
    ).all()
    sites = conn.execute(sa.text("SELECT id, name, created_at FROM site ORDER BY id")).all()
    product_of: dict[tuple[int, Decimal], int] = {}
    for site_id, name, created_at in sites:
        prices = [Decimal(str(round(s.price_per_replica_hour, 4))) for s in slices if s.site_id == site_id]
        ordered = sorted(set(prices), key=lambda p: (-prices.count(p), p)) or [DEFAULT_PRICE]
        since = min([_day(s.created_at) for s in slices if s.site_id == site_id] + [_day(created_at)])
        for n, price in enumerate(ordered):
            sku = f"standard-{name}" if n == 0 else f"standard-{name}-{n + 1}"
            product_of[site_id, price] = conn.execute(
                sa.text(
                    "INSERT INTO product (sku, site_id, name, hardware_class, unit, active, created_at) VALUES "
                    "(:sku, :site, :name, 'replica', 'capacity', :active, :now) RETURNING id"
                ),
                {"sku": sku[:64], "site": site_id, "name": f"Standard replica, {name}", "active": n == 0, "now": now},
            ).scalar_one()
            conn.execute(
                sa.text(
                    "INSERT INTO productprice (product_id, version, effective_from, currency, terms, created_at) "
                    "VALUES (:product, 1, :since, 'EUR', :terms, :now)"
                ),
                {"product": product_of[site_id, price], "since": since, "terms": json.dumps(_terms(price)), "now": now},
            )
    for s in slices:
        product = product_of[s.site_id, Decimal(str(round(s.price_per_replica_hour, 4)))]
        price_id = conn.execute(
            sa.text("SELECT id FROM productprice WHERE product_id = :p"), {"p": product}
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO lease (tenant_id, slice_id, product_id, price_id, starts_at, ends_at, created_at) "
                "VALUES (:tenant, :slice, :product, :price, :start, :end, :now)"
            ),
            {
                "tenant": s.tenant_id,
                "slice": s.id,
                "product": product,
                "price": price_id,
                "start": _minute(s.created_at),
                "end": _minute(s.updated_at) if s.status == "deleted" else None,
                "now": now,
            },
        )


def _day(value: datetime | str) -> date:
    return _at(value).date()


def _minute(value: datetime | str) -> datetime:
    return _at(value).replace(second=0, microsecond=0)


def _at(value: datetime | str) -> datetime:
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def downgrade() -> None:
    for table in APPEND_ONLY:
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        else:
            for action in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{action}")
    with op.batch_alter_table("slice", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("price_per_replica_hour", sa.FLOAT(), server_default=sa.text("'0'"), nullable=False)
        )

    with op.batch_alter_table("invoicedcharge", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoicedcharge_invoice_id"))

    op.drop_table("invoicedcharge")
    with op.batch_alter_table("chargedusage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_chargedusage_charge_id"))

    op.drop_table("chargedusage")
    with op.batch_alter_table("charge", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_charge_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_charge_lease_id"))

    op.drop_table("charge")
    with op.batch_alter_table("voucher", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_voucher_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_voucher_programme_id"))
        batch_op.drop_index(batch_op.f("ix_voucher_code"))

    op.drop_table("voucher")
    with op.batch_alter_table("lease", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lease_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_lease_slice_id"))
        batch_op.drop_index(batch_op.f("ix_lease_product_id"))

    op.drop_table("lease")
    op.drop_table("voucherprogramme")
    with op.batch_alter_table("productprice", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_productprice_product_id"))

    op.drop_table("productprice")
    op.drop_table("tenantbilling")
    with op.batch_alter_table("product", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_product_sku"))
        batch_op.drop_index(batch_op.f("ix_product_site_id"))

    op.drop_table("product")
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_invoice_number"))

    op.drop_table("invoice")
    with op.batch_alter_table("budgetalert", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_budgetalert_tenant_id"))

    op.drop_table("budgetalert")
