"""Model versions and slices: a tenant's rented inference capacity on a site.

A slice's knobs (replica bounds, autoscaling, batching, reservations) are written once, in
``SliceKnobs``, and taken from the edge's ``contracts.slice_spec``: the control plane's defaults and
bounds are the edge node's, so what the API accepts an edge node runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import field_validator, model_validator
from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from contracts.slice_spec import BatchSpec, ReplicaSpec, ResourceSpec, check_replica_bounds
from control_plane.models._common import Input, RowId, field_from, topic_safe_name, utcnow
from control_plane.scheduler import Priority, Residency
from control_plane.states import SliceStatus


class ModelVersion(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int | None = Field(default=None, foreign_key="tenant.id", index=True)  # None: public
    name: str = Field(max_length=100)
    version: str = Field(max_length=50)
    sha256: str = Field(index=True, max_length=64)
    size_bytes: int
    fixed_batch: int | None = None  # None: dynamic batch axis
    manifest: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class ModelVersionPublic(SQLModel):
    id: int
    tenant_id: int | None
    name: str
    version: str
    sha256: str
    size_bytes: int
    fixed_batch: int | None
    manifest: dict[str, Any]


def _replica_bounds(model: Any) -> Any:
    """``model_validator(mode="after")`` of the bodies that set both replica bounds: a 422 quoting them."""
    check_replica_bounds(model.min_replicas, model.max_replicas)
    return model


class SliceKnobs(SQLModel):
    """Every knob of a slice, written once: what callers set (``SliceCreate``), what is stored
    (``Slice``), what is shown (``SlicePublic``). Each takes its default, bounds and description from the
    edge's ``contracts.slice_spec``: the control plane sells what an edge node runs, so what the API
    accepts an edge node accepts. ``sites.slice_spec`` hands them to the agent in the spec's sections
    (``contracts.slice_spec.knob_sections``)."""

    min_replicas: int = field_from(ReplicaSpec, "min_replicas")
    max_replicas: int = field_from(ReplicaSpec, "max_replicas")
    max_batch_size: int = field_from(BatchSpec, "max_batch_size")
    batch_wait_ms: float = field_from(BatchSpec, "batch_wait_ms")
    cpus_per_replica: float = field_from(ResourceSpec, "cpus_per_replica")
    gpus_per_replica: float = field_from(ResourceSpec, "gpus_per_replica")
    target_ongoing_requests: float = field_from(ReplicaSpec, "target_ongoing_requests")
    upscale_delay_s: float = field_from(ReplicaSpec, "upscale_delay_s")
    downscale_delay_s: float = field_from(ReplicaSpec, "downscale_delay_s")
    priority: Priority = Field(default=Priority.RESERVED, description="reserved, burst or bank (compute bank).")
    residency: Residency = Field(
        default=Residency.SITE,
        description="Where its frames may be judged: own_nodes (only nodes its tenant owns), operator_nodes (only "
        "the operator's), site (the operator's nodes its class may use and its tenant's own) or any_bank (also "
        "other owners' nodes while they lend them, for bank slices). Never broken: if the rule leaves the slice "
        "short, it runs with what fits and an alert event says why.",
    )


OVERFLOW_REGIONS = (
    "Regions whose sites may run this burst or bank slice's replicas when its home site is full, while the "
    "round trip to the home broker plus its p99 stays within its lines' latency budget; empty: it stays home."
)


def _regions(value: list[str]) -> list[str]:
    return sorted({topic_safe_name(v) for v in value})


class SliceCreate(SliceKnobs, Input):
    slug: str = Field(description="Topic-safe slice name, unique per tenant.")
    line_ids: list[RowId] = Field(
        min_length=1, max_length=100, description="Lines (all on one site) whose frames the slice judges."
    )
    model_version_id: RowId = Field(description="Model version (the tenant's own or a public one).")
    product_id: RowId | None = Field(
        default=None, description="Product to lease from GET /catalogue (default: the site's standard product)."
    )
    price_id: RowId | None = Field(
        default=None,
        description="The price version you were quoted (POST /leases/quote); if another is in force now the "
        "slice is refused with 409 price_changed. Omitted: the price in force.",
    )
    overflow_regions: list[str] = Field(default_factory=list, max_length=20, description=OVERFLOW_REGIONS)
    _check_slug = field_validator("slug")(topic_safe_name)
    _check_regions = field_validator("overflow_regions")(_regions)
    _bounds = model_validator(mode="after")(_replica_bounds)

    @model_validator(mode="after")
    def _reserved_stays_home(self) -> SliceCreate:
        if self.overflow_regions and self.priority is Priority.RESERVED:
            raise ValueError("a reserved slice stays on its site: overflow_regions needs priority burst or bank")
        return self


class SliceOverflow(Input):
    regions: list[str] = Field(max_length=20, description=OVERFLOW_REGIONS)
    _check_regions = field_validator("regions")(_regions)


class SliceScale(Input):
    min_replicas: int = field_from(ReplicaSpec, "min_replicas", default=...)
    max_replicas: int = field_from(ReplicaSpec, "max_replicas", default=...)
    _bounds = model_validator(mode="after")(_replica_bounds)


class Slice(SliceKnobs, table=True):
    __table_args__ = (UniqueConstraint("tenant_id", "slug"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    slug: str = Field(max_length=63)
    line_ids: list[int] = Field(sa_column=Column(JSON, nullable=False))
    model_version_id: int = Field(foreign_key="modelversion.id")
    placement: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # node id -> n
    overflow_regions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    overflow: dict[str, dict[str, int]] = Field(  # site id -> {node id -> replicas}: placed away from home
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    credential_epoch: int = 1  # part of the ingress's derived broker password; bumped to rotate it
    status: SliceStatus = Field(default=SliceStatus.PENDING)
    status_message: str = Field(default="", max_length=2000)
    generation: int = 1
    observed_generation: int = 0
    actual: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def app_name(self) -> str:
        """Ray Serve application name and shared-subscription group: unique per site."""
        return f"t{self.tenant_id}-{self.slug}"


class SlicePublic(SliceKnobs):
    id: int
    tenant_id: int
    site_id: int
    slug: str
    line_ids: list[int]
    model_version_id: int
    placement: dict[str, int]
    overflow_regions: list[str]
    overflow: dict[str, dict[str, int]] = Field(
        description="Replicas running on other sites because the home site is full: site id -> {node id -> n}."
    )
    credential_epoch: int = Field(description="Bumped each time the ingress's broker credentials rotate.")
    status: SliceStatus
    status_message: str
    generation: int
    observed_generation: int
    actual: dict[str, Any]
