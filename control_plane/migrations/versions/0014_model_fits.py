"""model fits: an anomaly model fitted from a tenant's good photos as a Ray job on its site, with its
status, stage, progress, report figures, CPU seconds and the model version it registered (issue 15)

Data: no fit exists before this revision.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

FIT_STATUS = sa.Enum("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", name="fitstatus")


def upgrade() -> None:
    op.create_table(
        "modelfit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
        sa.Column("false_reject_rate", sa.Float(), nullable=False),
        sa.Column("time_limit_s", sa.Integer(), nullable=False),
        sa.Column("photos", sa.Integer(), nullable=False),
        sa.Column("defect_photos", sa.Integer(), nullable=False),
        sa.Column("status", FIT_STATUS, nullable=False),
        sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("cpu_s", sa.Float(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("started_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("finished_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["user.id"]),
        sa.ForeignKeyConstraint(["model_version_id"], ["modelversion.id"]),
        sa.ForeignKeyConstraint(["node_id"], ["node.id"]),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_modelfit_site_id"), "modelfit", ["site_id"], unique=False)
    op.create_index(op.f("ix_modelfit_status"), "modelfit", ["status"], unique=False)
    op.create_index(op.f("ix_modelfit_tenant_id"), "modelfit", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_modelfit_tenant_id"), table_name="modelfit")
    op.drop_index(op.f("ix_modelfit_status"), table_name="modelfit")
    op.drop_index(op.f("ix_modelfit_site_id"), table_name="modelfit")
    op.drop_table("modelfit")
    FIT_STATUS.drop(op.get_bind(), checkfirst=True)
