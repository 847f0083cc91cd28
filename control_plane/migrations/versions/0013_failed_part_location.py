"""failed parts keep where the defect is: ``failedpart.location`` (JSON, nullable), the anomaly model's
peak and region or a detector's top defect box, in 0..1 frame coordinates (``wire.Location``), so the
plant page can outline it on the thumbnail (issue 15)

Data: parts failed before this revision have no location (null).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("failedpart") as batch:
        batch.add_column(sa.Column("location", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("failedpart") as batch:
        batch.drop_column("location")
