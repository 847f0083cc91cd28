"""cross-site overflow: each site's region and the address other sites reach its broker at, the measured
(or pinned) round trip between sites (``sitelink``), and each slice's overflow regions and the replicas it
runs away from home (issue 17, section 1)

Data: existing sites are in region ``default`` and reach each other at their broker address; no slice
overflows until its regions are set.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("site") as batch:
        batch.add_column(sa.Column("region", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False,
                                   server_default="default"))  # fmt: skip
        batch.add_column(sa.Column("wan_broker_host", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch.add_column(sa.Column("wan_broker_port", sa.Integer(), nullable=True))
    with op.batch_alter_table("slice") as batch:
        batch.add_column(sa.Column("overflow_regions", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("overflow", sa.JSON(), nullable=False, server_default="{}"))
    op.create_table(
        "sitelink",
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("peer_site_id", sa.Integer(), nullable=False),
        sa.Column("measured_rtt_ms", sa.Float(), nullable=True),
        sa.Column("measured_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("pinned_rtt_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"]),
        sa.ForeignKeyConstraint(["peer_site_id"], ["site.id"]),
        sa.PrimaryKeyConstraint("site_id", "peer_site_id"),
    )
    if op.get_bind().dialect.name == "postgresql":  # ScaleKind.OVERFLOW: replicas placed on or taken off other sites
        op.execute("ALTER TYPE scalekind ADD VALUE IF NOT EXISTS 'OVERFLOW'")


def downgrade() -> None:
    op.drop_table("sitelink")
    with op.batch_alter_table("slice") as batch:
        batch.drop_column("overflow")
        batch.drop_column("overflow_regions")
    with op.batch_alter_table("site") as batch:
        batch.drop_column("wan_broker_port")
        batch.drop_column("wan_broker_host")
        batch.drop_column("region")
