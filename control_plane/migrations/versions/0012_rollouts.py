"""rollouts: a slice's move to a new model version through shadow and canary steps, with its thresholds,
the figures of the step in progress and of those done (issue 15, section 3); rollout steps and rollbacks
are scale events of the new kind ``rollout``

Data: no slice has a rollout; at most one runs per slice (a partial unique index).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ROLLOUT_STATE = sa.Enum("RUNNING", "COMPLETED", "ROLLED_BACK", "ABORTED", name="rolloutstate")
RUNNING = sa.text("state = 'RUNNING'")


def upgrade() -> None:
    op.create_table(
        "rollout",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("slice_id", sa.Integer(), nullable=False),
        sa.Column("from_model_version_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("state", ROLLOUT_STATE, nullable=False),
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("min_frames", sa.Integer(), nullable=False),
        sa.Column("max_error_rate", sa.Float(), nullable=False),
        sa.Column("max_p99_ms", sa.Float(), nullable=False),
        sa.Column("max_fail_rate_diff", sa.Float(), nullable=False),
        sa.Column("auto_advance", sa.Boolean(), nullable=False),
        sa.Column("step_started_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("window", sa.JSON(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("finished_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["user.id"]),
        sa.ForeignKeyConstraint(["from_model_version_id"], ["modelversion.id"]),
        sa.ForeignKeyConstraint(["model_version_id"], ["modelversion.id"]),
        sa.ForeignKeyConstraint(["slice_id"], ["slice.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_rollout_slice_id"), "rollout", ["slice_id"], unique=False)
    op.create_index(op.f("ix_rollout_tenant_id"), "rollout", ["tenant_id"], unique=False)
    op.create_index(
        "ux_rollout_running_slice", "rollout", ["slice_id"], unique=True, sqlite_where=RUNNING, postgresql_where=RUNNING
    )
    if op.get_bind().dialect.name == "postgresql":  # ScaleKind.ROLLOUT: a rollout's step, end or rollback
        op.execute("ALTER TYPE scalekind ADD VALUE IF NOT EXISTS 'ROLLOUT'")


def downgrade() -> None:
    op.drop_index("ux_rollout_running_slice", table_name="rollout")
    op.drop_index(op.f("ix_rollout_tenant_id"), table_name="rollout")
    op.drop_index(op.f("ix_rollout_slice_id"), table_name="rollout")
    op.drop_table("rollout")
    ROLLOUT_STATE.drop(op.get_bind(), checkfirst=True)
