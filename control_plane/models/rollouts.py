"""Rollouts: a slice moving to a new model version through shadow and canary steps, with automatic rollback.

``RolloutCreate`` is what a plant manager sends, ``Rollout`` what is stored (one running rollout per
slice, backed by a partial unique index), ``RolloutPublic`` what is shown. The decision logic (steps,
thresholds, windows) is ``control_plane.rollouts``; the edge's side is ``contracts.slice_spec.RolloutSpec``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from itertools import pairwise
from typing import Any

from pydantic import field_validator
from sqlalchemy import JSON, Column, Index, text
from sqlmodel import Field, SQLModel

from control_plane.models._common import Input, RowId, utcnow


class RolloutState(StrEnum):
    RUNNING = "running"  # a step is live on the slice
    COMPLETED = "completed"  # the candidate became the slice's model
    ROLLED_BACK = "rolled_back"  # a threshold passed: the slice is back on its model alone
    ABORTED = "aborted"  # a user stopped it: the slice is back on its model alone


class RolloutCreate(Input):
    """Start moving a slice to another model version."""

    slice_id: RowId = Field(description="The slice to move.")
    model_version_id: RowId = Field(description="The candidate model version (your tenant's own or a public one).")
    shadow: bool = Field(
        default=True,
        description="Begin with a shadow step: the candidate judges every frame too; its verdicts are compared "
        "with the current model's and never published.",
    )
    canary_shares: list[float] = Field(
        default_factory=lambda: [0.1, 0.5],
        max_length=10,
        description="Canary steps, each the share of robots (0-1, rising) whose frames the candidate judges and "
        "answers; a robot always sees one model's verdicts (routing by a hash of its name). [] skips the canary.",
    )
    window_s: int = Field(
        default=300, ge=5, le=7 * 24 * 3600, description="Seconds each step is watched before it may advance."
    )
    min_frames: int = Field(
        default=50,
        ge=1,
        le=1_000_000,
        description="Frames the candidate must judge in a step before it can "
        "advance, and before the thresholds are judged.",
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Roll back when more than this share of the candidate's answers are model errors (internal).",
    )
    max_p99_ms: float | None = Field(
        default=None,
        gt=0,
        le=600_000,
        description="Roll back when the candidate's p99 latency passes this; default the line's latency budget.",
    )
    max_fail_rate_diff: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Roll back when the candidate's fail rate differs from the current "
        "model's by more than this (0.05 = 5 points, either way).",
    )
    auto_advance: bool = Field(
        default=True, description="Step forward on its own when a step's window passes clean; else wait for advance."
    )

    @field_validator("canary_shares")
    @classmethod
    def _rising_shares(cls, value: list[float]) -> list[float]:
        if any(not 0 < share < 1 for share in value):
            raise ValueError(f"canary_shares {value} must each be between 0 and 1 (1 is the full step)")
        if any(b <= a for a, b in pairwise(value)):
            raise ValueError(f"canary_shares {value} must rise step by step")
        return value


class Rollout(SQLModel, table=True):
    __table_args__ = (
        Index(
            "ux_rollout_running_slice",
            "slice_id",
            unique=True,
            sqlite_where=text("state = 'RUNNING'"),
            postgresql_where=text("state = 'RUNNING'"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    slice_id: int = Field(foreign_key="slice.id", index=True)
    from_model_version_id: int = Field(foreign_key="modelversion.id")
    model_version_id: int = Field(foreign_key="modelversion.id")  # the candidate
    steps: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))  # [{"stage", "share"}]
    step: int = 0
    state: RolloutState = Field(default=RolloutState.RUNNING)
    window_s: int
    min_frames: int
    max_error_rate: float
    max_p99_ms: float
    max_fail_rate_diff: float
    auto_advance: bool = True
    step_started_at: datetime = Field(default_factory=utcnow)
    window: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # this step's counts
    history: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    reason: str = Field(default="", max_length=2000)
    created_by: int | None = Field(default=None, foreign_key="user.id")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class RolloutPublic(SQLModel):
    id: int
    slice_id: int
    from_model_version_id: int
    model_version_id: int
    steps: list[dict[str, Any]]
    step: int
    stage: str = Field(description="shadow, canary or full: what the current step does.")
    share: float = Field(description="Share of robots the candidate answers in this step (shadow: 0).")
    state: RolloutState
    window_s: int
    min_frames: int
    max_error_rate: float
    max_p99_ms: float
    max_fail_rate_diff: float
    auto_advance: bool
    step_started_at: datetime
    comparison: dict[str, Any] = Field(
        description="This step's figures: each model's frames, fail rate, error "
        "rate and p99; in shadow the agreement counts and disagreement rate."
    )
    history: list[dict[str, Any]] = Field(description="Each finished step's comparison.")
    reason: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
