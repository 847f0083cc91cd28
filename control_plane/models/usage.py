"""Metered usage (issue 13, section 2): what really ran, one row per idempotency key.

Why one table for both sources: rating reads capacity and verdicts the same way (by slice, window and
key) and posts each key once; a column left empty by one source costs nothing. ``key`` is
``pricing.usage_key`` and unique, so a repeated, reordered or late report is stored once (the insert
is ``ON CONFLICT DO NOTHING``). Rows are written by ``control_plane.metering`` and never changed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from control_plane.models._common import utcnow


class UsageRecord(SQLModel, table=True):
    """Replica-seconds of a slice on a node (``capacity``) or verdicts of a slice on a line (``verdicts``)."""

    __table_args__ = (Index("ix_usagerecord_slice_window_id", "slice_id", "window_start", "id"),)  # rating pages by it
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=300, unique=True, index=True)  # pricing.usage_key
    source: str = Field(max_length=16)  # 'capacity' | 'verdicts' | 'gap' (an agent's silence: shown, never rated)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    slice_id: int = Field(foreign_key="slice.id")
    node_id: int | None = Field(default=None, foreign_key="node.id")  # capacity
    line_id: int | None = Field(default=None, foreign_key="line.id")  # verdicts
    window_start: datetime  # UTC; a capacity or verdicts window never crosses a minute boundary (a gap may)
    window_s: int
    replica_seconds: int = Field(default=0, sa_type=BigInteger)  # capacity
    verdicts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # by outcome
    received_at: datetime = Field(default_factory=utcnow)
