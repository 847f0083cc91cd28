"""usage: metered usage records, unique by idempotency key (issue 13, section 2)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usagerecord",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("slice_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.Column("line_id", sa.Integer(), nullable=True),
        sa.Column("window_start", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("replica_seconds", sa.BigInteger(), nullable=False),
        sa.Column("verdicts", sa.JSON(), nullable=False),
        sa.Column("received_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["line_id"], ["line.id"]),
        sa.ForeignKeyConstraint(["node_id"], ["node.id"]),
        sa.ForeignKeyConstraint(["slice_id"], ["slice.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_usagerecord_key", "usagerecord", ["key"], unique=True)
    op.create_index("ix_usagerecord_tenant_id", "usagerecord", ["tenant_id"], unique=False)
    op.create_index("ix_usagerecord_slice_window", "usagerecord", ["slice_id", "window_start"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_usagerecord_slice_window", table_name="usagerecord")
    op.drop_index("ix_usagerecord_tenant_id", table_name="usagerecord")
    op.drop_index("ix_usagerecord_key", table_name="usagerecord")
    op.drop_table("usagerecord")
