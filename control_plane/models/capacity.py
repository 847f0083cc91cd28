"""Capacity tied to order volume: order plans per line, measured model profiles, scale events."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from pydantic import field_validator
from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from control_plane.models._common import Input, hhmm, utcnow, weekdays


class ShiftIn(Input):
    name: str = Field(min_length=1, max_length=50, description="e.g. 'early'.")
    days: list[int] = Field(min_length=1, description="Weekdays, 0 = Monday.")
    start: str = Field(description="HH:MM local plant time.")
    end: str = Field(description="HH:MM; before start = past midnight.")

    _times = field_validator("start", "end")(hhmm)

    _days = field_validator("days")(weekdays)


class VolumeIn(Input):
    effective_from: date = Field(description="First day this volume applies.")
    parts_per_shift: int = Field(ge=0, le=10_000_000, description="Parts made in each shift from that day on.")


class OrderPlanIn(Input):
    views_per_part: int = Field(ge=1, le=100, description="Frames each part gets (cameras x angles).")
    headroom: float = Field(default=0.25, ge=0, le=5, description="Extra capacity above the computed need.")
    idle_floor: int = Field(default=0, ge=0, le=256, description="Replicas kept between shifts.")
    target_latency_ms: float | None = Field(default=None, gt=0, description="Optional latency goal of the line.")
    shifts: list[ShiftIn] = Field(min_length=1, max_length=21)
    volumes: list[VolumeIn] = Field(default_factory=list, max_length=1000)


class OrderPlan(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    line_id: int = Field(foreign_key="line.id", unique=True)
    plan: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)


class ModelProfile(SQLModel, table=True):
    """A model's measured speed on one hardware class at one site (a node only speaks for its own site)."""

    __table_args__ = (UniqueConstraint("site_id", "model_sha256", "hardware"),)
    id: int | None = Field(default=None, primary_key=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    model_sha256: str = Field(index=True, max_length=64)
    hardware: str = Field(max_length=200)
    frames_per_s_per_replica: float
    cold_start_s: float
    measured_at: datetime = Field(default_factory=utcnow)


class ModelProfilePublic(SQLModel):
    model_sha256: str
    hardware: str
    frames_per_s_per_replica: float
    cold_start_s: float
    measured_at: datetime


class ScaleKind(StrEnum):
    MANUAL = "manual"
    PLANNED = "planned"
    REACTIVE = "reactive"
    PREEMPTION = "preemption"
    DRAIN = "drain"
    ALERT = "alert"  # a reserved slice no longer fits: operators must add capacity
    BILLING = "billing"  # a burst/bank slice held at its floor (funds used up) or released
    ROLLOUT = "rollout"  # a model rollout stepped forward, finished, was aborted or rolled back (bounds unchanged)
    OVERFLOW = "overflow"  # replicas placed on another site (home full), taken back, or refused (latency budget)


class ScaleEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    slice_id: int = Field(foreign_key="slice.id", index=True)
    at: datetime = Field(default_factory=utcnow)
    kind: ScaleKind
    min_before: int
    min_after: int
    max_before: int
    max_after: int
    reason: str = Field(max_length=2000)
    running_before: int | None = None  # running model replicas, when the event is a change of them
    running_after: int | None = None


class ScaleEventPublic(SQLModel):
    slice_id: int
    at: datetime
    kind: ScaleKind
    min_before: int
    min_after: int
    max_before: int
    max_after: int
    reason: str
    running_before: int | None
    running_after: int | None
