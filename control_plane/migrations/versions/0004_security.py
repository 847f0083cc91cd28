"""security: login lockout, per-robot frame policy, slice credential epochs, profiles per site

Model profiles are measurements the agents repeat on every start, so the table is
rebuilt (keyed by site) rather than migrated: a profile without a site cannot be
attributed to the node that reported it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _profile_table(with_site: bool) -> None:
    columns = [
        sa.Column("id", sa.Integer(), nullable=False),
        *([sa.Column("site_id", sa.Integer(), nullable=False)] if with_site else []),
        sa.Column("model_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("hardware", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("frames_per_s_per_replica", sa.Float(), nullable=False),
        sa.Column("cold_start_s", sa.Float(), nullable=False),
        sa.Column("measured_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    ]
    if with_site:
        columns += [sa.ForeignKeyConstraint(["site_id"], ["site.id"]),
                    sa.UniqueConstraint("site_id", "model_sha256", "hardware")]  # fmt: skip
    else:
        columns.append(sa.UniqueConstraint("model_sha256", "hardware"))
    op.create_table("modelprofile", *columns)
    with op.batch_alter_table("modelprofile", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_modelprofile_model_sha256"), ["model_sha256"], unique=False)
        if with_site:
            batch_op.create_index(batch_op.f("ix_modelprofile_site_id"), ["site_id"], unique=False)


def upgrade() -> None:
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("locked_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    with op.batch_alter_table("line", schema=None) as batch_op:
        batch_op.add_column(sa.Column("robot_max_fps", sa.Float(), nullable=False, server_default="30"))
        batch_op.add_column(sa.Column("robot_max_frame_bytes", sa.Integer(), nullable=False,
                                      server_default=str(4 * 1024 * 1024)))  # fmt: skip
    with op.batch_alter_table("slice", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credential_epoch", sa.Integer(), nullable=False, server_default="1"))
    op.drop_table("modelprofile")
    _profile_table(with_site=True)


def downgrade() -> None:
    op.drop_table("modelprofile")
    _profile_table(with_site=False)
    with op.batch_alter_table("slice", schema=None) as batch_op:
        batch_op.drop_column("credential_epoch")
    with op.batch_alter_table("line", schema=None) as batch_op:
        batch_op.drop_column("robot_max_frame_bytes")
        batch_op.drop_column("robot_max_fps")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_column("locked_until")
        batch_op.drop_column("failed_logins")
