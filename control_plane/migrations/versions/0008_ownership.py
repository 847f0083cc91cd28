"""ownership and residency: nodes and join tokens have an owner (a tenant, or none: the operator), the
edge_operator role, and each slice's residency rule (issue 14, sections 1 and 4)

Data: every existing node and join token stays the operator's (owner null); every existing slice keeps
today's behaviour, residency ``site``. PostgreSQL cannot drop a value from an enum type, so downgrading
leaves ``EDGE_OPERATOR`` in the ``role`` type (users of that role must go first).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

RESIDENCY = sa.Enum("OWN_NODES", "OPERATOR_NODES", "SITE", "ANY_BANK", name="residency")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TYPE role ADD VALUE IF NOT EXISTS 'EDGE_OPERATOR'")
    RESIDENCY.create(op.get_bind(), checkfirst=True)  # PostgreSQL: add_column does not create enum types
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_tenant_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_node_owner_tenant_id"), ["owner_tenant_id"], unique=False)
        batch_op.create_foreign_key("fk_node_owner_tenant_id", "tenant", ["owner_tenant_id"], ["id"])
    with op.batch_alter_table("jointoken", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_tenant_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_jointoken_owner_tenant_id", "tenant", ["owner_tenant_id"], ["id"])
    with op.batch_alter_table("slice", schema=None) as batch_op:
        batch_op.add_column(sa.Column("residency", RESIDENCY, nullable=False, server_default="SITE"))


def downgrade() -> None:
    with op.batch_alter_table("slice", schema=None) as batch_op:
        batch_op.drop_column("residency")
    with op.batch_alter_table("jointoken", schema=None) as batch_op:
        batch_op.drop_constraint("fk_jointoken_owner_tenant_id", type_="foreignkey")
        batch_op.drop_column("owner_tenant_id")
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_constraint("fk_node_owner_tenant_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_node_owner_tenant_id"))
        batch_op.drop_column("owner_tenant_id")
    RESIDENCY.drop(op.get_bind(), checkfirst=True)
