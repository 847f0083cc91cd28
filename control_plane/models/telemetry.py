"""What the slices saw, kept for the dashboard: verdicts per line and minute, failed parts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


class LineMinute(SQLModel, table=True):
    """One line's verdicts in one minute, summed over the slices' ingress replicas.

    Each control plane instance writes rows of its own (``source``), so several instances sharing
    the telemetry (a shared subscription) never race on a row; readers add the rows up.
    """

    __table_args__ = (UniqueConstraint("line_id", "minute", "source"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    line_id: int = Field(foreign_key="line.id")
    minute: datetime  # UTC, seconds zeroed
    source: str = Field(default="", max_length=64)
    covered_from: datetime | None = None  # start of the earliest telemetry window counted here (rates need it)
    frames: int = 0
    fails: int = 0
    errors: int = 0
    latency_histogram: list[int] = Field(sa_column=Column(JSON, nullable=False))  # wire.LATENCY_BUCKETS_MS


class FailedPart(SQLModel, table=True):
    """A part a slice failed, with a thumbnail; the newest ones per line are kept."""

    __table_args__ = (Index("ix_failedpart_line_id", "line_id", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    line_id: int = Field(foreign_key="line.id")
    robot: str = Field(max_length=63)
    frame_id: str = Field(max_length=256)
    at: datetime
    defect_class: str | None = Field(default=None, max_length=100)
    score: float
    thumbnail: bytes = Field(default=b"", sa_column=Column(LargeBinary, nullable=False))
    location: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    """``wire.Location`` as JSON: where the defect is in the frame, when the model says."""


class FailedPartPublic(SQLModel):
    id: int
    line_id: int
    robot: str
    frame_id: str
    at: datetime
    defect_class: str | None
    score: float
    location: dict[str, Any] | None = None
