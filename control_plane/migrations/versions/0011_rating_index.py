"""rating's keyset index: usage records by (slice, window start, id), the order and the row comparison
``rating.rate_records`` pages with; the (slice, window start) index made PostgreSQL sort every batch anew

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_usagerecord_slice_window", table_name="usagerecord")
    op.create_index("ix_usagerecord_slice_window_id", "usagerecord", ["slice_id", "window_start", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_usagerecord_slice_window_id", table_name="usagerecord")
    op.create_index("ix_usagerecord_slice_window", "usagerecord", ["slice_id", "window_start"], unique=False)
