"""a model fit runs in one of its tenant's slices and is billed as that slice's capacity:
``modelfit.slice_id`` (nullable foreign key to ``slice``), chosen when the fit is queued (issue 15)

Data: fits queued before this revision name no slice (null) and are not billed.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("modelfit") as batch:
        batch.add_column(sa.Column("slice_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_modelfit_slice_id_slice", "slice", ["slice_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("modelfit") as batch:
        batch.drop_constraint("fk_modelfit_slice_id_slice", type_="foreignkey")
        batch.drop_column("slice_id")
