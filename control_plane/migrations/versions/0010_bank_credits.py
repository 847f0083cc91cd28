"""the compute bank's money: each site's rule for contributors' share (versions, never changed) and one row
per credit a contributed node earned from a bank charge (written once) (issue 14, section 2)

Data: no site has a rule yet, so contributors earn the default share (``bank.DEFAULT_SHARE_BP``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SETTLE_AS = sa.Enum("CREDITS", "PAYABLE", name="settleas")
APPEND_ONLY = ("bankrule", "bankcredit")


def upgrade() -> None:
    op.create_table(
        "bankrule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column("share_bp", sa.Integer(), nullable=False),
        sa.Column("settle_as", SETTLE_AS, nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.CheckConstraint("share_bp BETWEEN 0 AND 10000", name="ck_bankrule_share_bp"),
    )
    op.create_index(op.f("ix_bankrule_site_id"), "bankrule", ["site_id"], unique=False)
    op.create_table(
        "bankcredit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("charge_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("owner_tenant_id", sa.Integer(), nullable=True),
        sa.Column("slice_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("hour_start", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("replica_seconds", sa.BigInteger(), nullable=False),
        sa.Column("share_bp", sa.Integer(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("settle_as", SETTLE_AS, nullable=False),
        sa.Column("transaction_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["charge_id"], ["charge.id"]),
        sa.ForeignKeyConstraint(["node_id"], ["node.id"]),
        sa.ForeignKeyConstraint(["owner_tenant_id"], ["tenant.id"]),
        sa.ForeignKeyConstraint(["slice_id"], ["slice.id"]),
        sa.ForeignKeyConstraint(["transaction_id"], ["journaltransaction.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("charge_id", "node_id"),
        sa.UniqueConstraint("transaction_id"),
    )
    op.create_index(op.f("ix_bankcredit_charge_id"), "bankcredit", ["charge_id"], unique=False)
    op.create_index(op.f("ix_bankcredit_node_id"), "bankcredit", ["node_id"], unique=False)
    op.create_index(op.f("ix_bankcredit_owner_tenant_id"), "bankcredit", ["owner_tenant_id"], unique=False)
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
                f"SELECT RAISE(ABORT, 'bank rows in {table} are written once; post a correction'); END"
            )


def downgrade() -> None:
    op.drop_table("bankcredit")
    op.drop_table("bankrule")
    SETTLE_AS.drop(op.get_bind(), checkfirst=True)
