"""Model fits: an anomaly model fitted from a tenant's photos of good parts, as a Ray job on its site.

A fit is created by ``POST /models/fits`` (queued), picked up by the head agent of its site (running,
with a stage and a 0..1 progress it reports), and ends succeeded (with the model version it registered),
failed, cancelled or timed_out. The transitions are ``control_plane.fits.move``; the edge's side is
``contracts.agent_api.FitJob``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import StringConstraints
from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from control_plane.models._common import Input, RowId, utcnow

ModelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
SemVer = Annotated[str, StringConstraints(pattern=r"^\d{1,6}\.\d{1,6}\.\d{1,6}$")]
"""As ``contracts.manifest.ModelManifest`` has them, so the fitted model's manifest accepts what the form did."""


class FitStatus(StrEnum):
    QUEUED = "queued"  # waiting for the site's head agent
    RUNNING = "running"  # a Ray task fits it
    SUCCEEDED = "succeeded"  # the model version is registered
    FAILED = "failed"  # the photos or the fit failed: ``message`` says why
    CANCELLED = "cancelled"  # a user cancelled it
    TIMED_OUT = "timed_out"  # it ran past its time limit

    @property
    def finished(self) -> bool:
        return self not in (FitStatus.QUEUED, FitStatus.RUNNING)


class FitCreate(Input):
    """The form fields of ``POST /models/fits`` (beside the ``photos`` zip)."""

    name: ModelName = Field(description="Model name, e.g. bracket-anomaly.")
    version: SemVer = Field(description="Semantic version of the fitted model, e.g. 1.0.0.")
    false_reject_rate: float = Field(
        default=0.01, ge=0.001, le=0.2, description="Share of good parts the threshold may reject (0.01 = 1%)."
    )
    time_limit_s: int = Field(
        default=600, ge=5, le=3600, description="Seconds the fit may run on the site; then it is stopped (timed_out)."
    )
    site_id: RowId | None = Field(default=None, description="Site to fit on; default the site of your first line.")
    slice_id: RowId | None = Field(
        default=None,
        description="Your slice on that site whose rented capacity the fit uses and is billed with; default the "
        "one with a lease in force, else your latest there.",
    )


class ModelFit(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    name: str = Field(max_length=100)
    version: str = Field(max_length=50)
    false_reject_rate: float
    time_limit_s: int
    photos: int  # good photos in the zip
    defect_photos: int = 0
    status: FitStatus = Field(default=FitStatus.QUEUED, index=True)
    stage: str = Field(default="queued", max_length=100)
    progress: float = 0.0
    message: str = Field(default="", max_length=2000)
    report: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    cpu_s: float = 0.0
    node_id: int | None = Field(default=None, foreign_key="node.id")
    slice_id: int | None = Field(default=None, foreign_key="slice.id")  # billed as its capacity (None: before 0015)
    model_version_id: int | None = Field(default=None, foreign_key="modelversion.id")
    created_by: int | None = Field(default=None, foreign_key="user.id")
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ModelFitPublic(SQLModel):
    id: int
    site_id: int
    name: str
    version: str
    false_reject_rate: float
    time_limit_s: int = Field(description="Seconds the fit may run on the site before it is stopped (timed_out).")
    photos: int = Field(description="Good photos in the upload.")
    defect_photos: int = Field(description="Defect photos in the upload (used only to report recall).")
    status: FitStatus
    stage: str = Field(description="What the fit is doing: queued, decoding, features, gaussians, calibrating, ...")
    progress: float = Field(description="0 to 1.")
    message: str = Field(description="Why it failed, or what to do next.")
    report: dict[str, Any] = Field(description="The fit's figures (threshold, held-out false rejects, recall, ...).")
    cpu_s: float = Field(description="CPU seconds the fit used on the site.")
    slice_id: int | None = Field(description="The slice whose capacity lease the fit is billed under.")
    model_version_id: int | None = Field(description="The model version it registered, once succeeded.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
