"""preemption with notice: each node's notice period (seconds its replicas get before they leave when its
owner reclaims it, its window ends or its owner's slices need its room) and the moments they must be gone
by (issue 14, section 3)

Data: existing nodes get a notice of 0 (today's behaviour: a drain moves replicas at once); nodes that are
draining now have no deadline, so they finish draining as before.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notice_s", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("held_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("bank_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_column("bank_until")
        batch_op.drop_column("held_until")
        batch_op.drop_column("notice_s")
