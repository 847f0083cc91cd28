"""Tables and API schemas of the control plane.

Each entity is layered as in full-stack-fastapi-template: ``XCreate`` (what a
caller may send: never ``tenant_id``, ``status`` or other server-owned
fields; unknown fields are refused), ``X(table=True)``, ``XPublic`` (what is
returned).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from sqlalchemy import JSON, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from contracts import wire
from contracts.slice_spec import BatchSpec, ReplicaSpec, ResourceSpec, check_replica_bounds
from control_plane.scheduler import Priority
from control_plane.states import NodeStatus, RobotStatus, SliceStatus

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_EMAIL = re.compile(
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"  # local part: RFC 5322 dot-atoms, no quotes
    r"@([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",  # host names with a dot
    re.IGNORECASE,
)  # no <, >, quotes, spaces or backslashes: an e-mail is shown on pages and in logs


def _weekdays(value: list[int]) -> list[int]:
    if any(d < 0 or d > 6 for d in value):
        raise ValueError(f"days {value} must be weekdays 0 (Monday) to 6 (Sunday)")
    return sorted(set(value))


def _hhmm(value: str) -> str:
    if not _HHMM.match(value):
        raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)")
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time, UTC-aware: SQLite hands back naive datetimes of what was stored as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


MAX_ID = 2**31 - 1
"""Ids are 32-bit on every database the control plane runs on; larger ones cannot name anything."""
RowId = Annotated[int, Ge(1), Le(MAX_ID)]
"""An id a caller sends in a body: bounded like path ids, so it is a 422, not the database's overflow."""


class Role(StrEnum):
    OPERATOR = "operator"
    PLANT_MANAGER = "plant_manager"
    FACTORY_IT = "factory_it"


class _Input(SQLModel):
    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]


def _slug(value: str) -> str:
    return wire.check_name(value, "name")


# --- tenants and users -------------------------------------------------------------------------


class TenantCreate(_Input):
    slug: str = Field(description="Topic-safe short name, e.g. 'acme'; appears in MQTT topics.")
    name: str = Field(min_length=1, max_length=200, description="Display name of the factory.")
    _check_slug = field_validator("slug")(_slug)


class Tenant(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(index=True, unique=True, max_length=63)
    name: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class TenantPublic(SQLModel):
    id: int
    slug: str
    name: str
    created_at: datetime


class UserCreate(_Input):
    email: str = Field(max_length=320, description="Login name (an e-mail address).")
    role: Role = Field(description="operator, plant_manager or factory_it.")
    tenant_id: RowId | None = Field(default=None, description="Operators only: the tenant of the new user.")
    password: str | None = Field(
        default=None, min_length=10, max_length=200, description="Dashboard password (10+ characters); optional."
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.fullmatch(value):
            raise ValueError(f"email {value!r} is not an e-mail address (name@domain)")
        return value.lower()


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int | None = Field(default=None, foreign_key="tenant.id", index=True)
    email: str = Field(unique=True, index=True, max_length=320)
    role: Role
    password_hash: str | None = Field(default=None, max_length=200)  # argon2id; None: API tokens only
    created_at: datetime = Field(default_factory=utcnow)
    failed_logins: int = 0  # consecutive wrong passwords; reset by a good one
    locked_until: datetime | None = None  # logins refused until then (too many wrong passwords)


class UserPublic(SQLModel):
    id: int
    tenant_id: int | None
    email: str
    role: Role


class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    name: str = Field(max_length=100)
    token_hash: str = Field(unique=True, index=True, max_length=64)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
    expires_at: datetime | None = None  # None (tokens from before expiry existed): created_at + api_token_ttl_days


class Login(_Input):
    email: str = Field(max_length=320, description="Login name.")
    password: str = Field(max_length=200)


class PasswordSet(_Input):
    password: str = Field(min_length=10, max_length=200, description="New dashboard password (10+ characters).")
    current_password: str | None = Field(
        default=None, max_length=200, description="Your current password; required unless you have none yet."
    )


MAX_TOKEN_DAYS = 366


class TokenCreate(_Input):
    name: str = Field(default="api", min_length=1, max_length=100, description="What the token is for.")
    expires_in_days: int | None = Field(
        default=None, ge=1, le=MAX_TOKEN_DAYS,
        description=f"Lifetime in days (1 to {MAX_TOKEN_DAYS}); default: the control plane's api_token_ttl_days.",
    )  # fmt: skip


class TokenPublic(SQLModel):
    """One of your API tokens or dashboard sessions, as listed: never the token or its hash."""

    id: int
    name: str
    prefix: str = Field(description="The token's first characters, to tell tokens apart.")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenIssued(SQLModel):
    id: int
    name: str
    token: str = Field(description="Shown once; only its hash is stored.")


class UserWithToken(UserPublic):
    token: str = Field(description="API token of the new user, shown once.")


# --- sites and nodes ---------------------------------------------------------------------------


class SiteCreate(_Input):
    name: str = Field(description="Topic-safe site name, e.g. 'plant-north'.")
    broker_host: str = Field(default="127.0.0.1", max_length=255, description="The site's MQTT broker host.")
    broker_port: int = Field(default=1883, gt=0, lt=65536, description="The site's MQTT broker port.")
    _check_name = field_validator("name")(_slug)


class Site(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=63)
    broker_host: str = Field(max_length=255)
    broker_port: int
    created_at: datetime = Field(default_factory=utcnow)


class SitePublic(SQLModel):
    id: int
    name: str
    broker_host: str
    broker_port: int


class BrokerAdmin(SQLModel):
    username: str
    password: str = Field(description="Dynamic-security admin password the site's Mosquitto must be set up with.")


class JoinToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    token_hash: str = Field(unique=True, index=True, max_length=64)
    expires_at: datetime
    used_at: datetime | None = None


class JoinTokenIssued(SQLModel):
    site_id: int
    token: str = Field(description="One-time token for `lineside edge-node join`; shown once.")
    expires_at: datetime


class NodeJoin(_Input):
    token: str = Field(description="The site's one-time join token.")
    hostname: str = Field(min_length=1, max_length=255)
    cpus: int = Field(ge=1, le=4096)
    memory_mb: int = Field(ge=1)
    gpus: list[dict[str, Any]] = Field(default_factory=list, description="[{'model': ..., 'memory_mb': ...}]")
    ray_address: str | None = Field(default=None, max_length=255, description="Ray head address this node uses.")


class Node(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    hostname: str = Field(max_length=255)
    cpus: int
    memory_mb: int
    gpus: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    ray_address: str | None = Field(default=None, max_length=255)
    status: NodeStatus = Field(default=NodeStatus.JOINING)
    contributed: bool = False  # compute bank: usable only inside its windows
    windows: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    holidays: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    ray_resources: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    token_hash: str = Field(unique=True, index=True, max_length=64)
    joined_at: datetime = Field(default_factory=utcnow)
    last_heartbeat_at: datetime | None = None
    utilization: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class NodePublic(SQLModel):
    id: int
    site_id: int
    hostname: str
    cpus: int
    memory_mb: int
    gpus: list[dict[str, Any]]
    ray_address: str | None
    status: NodeStatus
    last_heartbeat_at: datetime | None
    contributed: bool
    windows: list[dict[str, Any]]
    holidays: list[str]
    utilization: dict[str, Any] = Field(description="{'cpu': 0..1, 'gpus': [0..1, ...]} from the last heartbeat.")


class NodeJoined(NodePublic):
    node_token: str = Field(description="The agent's credential for heartbeats and desired state; shown once.")


class WindowIn(_Input):
    days: list[int] = Field(min_length=1, description="Weekdays, 0 = Monday.")
    start: str = Field(description="HH:MM local time the node becomes available.")
    end: str = Field(description="HH:MM; before start = the next morning.")

    _days = field_validator("days")(lambda v: _weekdays(v))
    _times = field_validator("start", "end")(lambda v: _hhmm(v))


class NodeContribution(_Input):
    """A contributed node (the compute bank) and when its owner lends it."""

    contributed: bool = Field(description="True: the node runs only bank slices, inside its windows.")
    windows: list[WindowIn] = Field(default_factory=list, max_length=50)
    holidays: list[date] = Field(default_factory=list, max_length=400, description="Whole days available.")


OPERATOR_NODE_STATUSES = (NodeStatus.DRAINING, NodeStatus.ONLINE, NodeStatus.REMOVED)
"""The node statuses an operator may set; the agent's heartbeats and the monitor set the others."""


class NodeStatusChange(_Input):
    status: NodeStatus = Field(description="draining, online (undrain) or removed.")

    @field_validator("status")
    @classmethod
    def _operators_may_set(cls, value: NodeStatus) -> NodeStatus:
        if value not in OPERATOR_NODE_STATUSES:
            raise ValueError(f"operators may set draining, online or removed; {value.value} is set by the agent")
        return value


# --- lines and robots --------------------------------------------------------------------------


ROBOT_MAX_FPS_HELP = "Frames per second each robot of the line may send; beyond it frames are answered rate_limited."
ROBOT_MAX_FRAME_BYTES_HELP = "Largest frame (bytes) a robot of the line may send; larger ones are answered too_large."


class LineCreate(_Input):
    slug: str = Field(description="Topic-safe line name, e.g. 'line-1'.")
    name: str = Field(default="", max_length=200)
    site_id: RowId = Field(description="Site whose slices serve this line.")
    latency_budget_ms: float = Field(default=100.0, gt=0, le=60_000)
    robot_max_fps: float = Field(default=30.0, gt=0, le=1000, description=ROBOT_MAX_FPS_HELP)
    robot_max_frame_bytes: int = Field(default=wire.MAX_FRAME_BYTES, ge=1024, le=wire.MAX_FRAME_BYTES,
                                       description=ROBOT_MAX_FRAME_BYTES_HELP)  # fmt: skip
    _check_slug = field_validator("slug")(_slug)


class LineUpdate(_Input):
    """Fields of a line that may change; omitted ones keep their value."""

    name: str | None = Field(default=None, max_length=200)
    latency_budget_ms: float | None = Field(default=None, gt=0, le=60_000)
    robot_max_fps: float | None = Field(default=None, gt=0, le=1000, description=ROBOT_MAX_FPS_HELP)
    robot_max_frame_bytes: int | None = Field(default=None, ge=1024, le=wire.MAX_FRAME_BYTES,
                                              description=ROBOT_MAX_FRAME_BYTES_HELP)  # fmt: skip


class Line(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("tenant_id", "slug"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    slug: str = Field(max_length=63)
    name: str = Field(default="", max_length=200)
    latency_budget_ms: float = 100.0
    robot_max_fps: float = 30.0  # per robot; frames beyond it are answered rate_limited, not inferred
    robot_max_frame_bytes: int = wire.MAX_FRAME_BYTES  # per frame; larger ones are answered too_large


class LinePublic(SQLModel):
    id: int
    tenant_id: int
    site_id: int
    slug: str
    name: str
    latency_budget_ms: float
    robot_max_fps: float
    robot_max_frame_bytes: int


class RobotCreate(_Input):
    slug: str = Field(description="Topic-safe robot name, e.g. 'cam-7'.")
    line_id: RowId = Field(description="Line the robot inspects on.")
    _check_slug = field_validator("slug")(_slug)


class Robot(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("line_id", "slug"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    line_id: int = Field(foreign_key="line.id", index=True)
    slug: str = Field(max_length=63)
    mqtt_username: str = Field(unique=True, index=True, max_length=200)
    status: RobotStatus = Field(default=RobotStatus.ACTIVE)
    credential_epoch: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    connected: bool | None = None  # from the robot's retained status topic; None: never said
    connection_changed_at: datetime | None = None
    last_frame_at: datetime | None = None  # from slice telemetry


class RobotPublic(SQLModel):
    id: int
    tenant_id: int
    line_id: int
    slug: str
    mqtt_username: str
    status: RobotStatus
    created_at: datetime
    connected: bool | None = Field(default=None, description="Robot's own online/offline status; null: unknown.")
    connection_changed_at: datetime | None = None
    last_frame_at: datetime | None = Field(default=None, description="When a slice last answered its frame.")


class RobotCredentials(RobotPublic):
    mqtt_password: str = Field(description="Shown once; rotate to get a new one.")
    client_id: str = Field(description="The only MQTT client id this robot may connect with.")
    watch_username: str = Field(description="Read-only credentials for the robot's answers (client id = username).")
    watch_password: str = Field(description="Shown once, rotated with the robot's password.")
    broker_host: str
    broker_port: int
    topics: dict[str, str] = Field(description="frames, status (publish); results, errors (subscribe).")
    examples: dict[str, str] = Field(description="Ready-to-run mosquitto_pub / mosquitto_sub / Python SDK.")


# --- models ------------------------------------------------------------------------------------


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


# --- slices ------------------------------------------------------------------------------------


def _knob(spec: type[BaseModel], name: str, *, required: bool = False) -> Any:
    """A slice knob as the edge's ``contracts.slice_spec`` defines it: its default, bounds and description.

    The control plane sells what an edge node runs, so it takes each knob from the spec instead of
    writing it again: a default or bound changed there changes here, and what the API accepts an
    edge node accepts.
    """
    info = spec.model_fields[name]
    bounds = {key: getattr(m, key) for m in info.metadata for key in ("gt", "ge", "lt", "le") if hasattr(m, key)}
    return Field(default=... if required else info.default, description=info.description, **bounds)


def _replica_bounds(model: Any) -> Any:
    """``model_validator(mode="after")`` of the bodies that set both replica bounds: a 422 quoting them."""
    check_replica_bounds(model.min_replicas, model.max_replicas)
    return model


class SliceKnobs(SQLModel):
    """Every knob of a slice, written once: what callers set (``SliceCreate``), what is stored
    (``Slice``), what is shown (``SlicePublic``). ``sites.slice_spec`` hands them to the agent in the
    spec's sections (``contracts.slice_spec.knob_sections``)."""

    min_replicas: int = _knob(ReplicaSpec, "min_replicas")
    max_replicas: int = _knob(ReplicaSpec, "max_replicas")
    max_batch_size: int = _knob(BatchSpec, "max_batch_size")
    batch_wait_ms: float = _knob(BatchSpec, "batch_wait_ms")
    cpus_per_replica: float = _knob(ResourceSpec, "cpus_per_replica")
    gpus_per_replica: float = _knob(ResourceSpec, "gpus_per_replica")
    target_ongoing_requests: float = _knob(ReplicaSpec, "target_ongoing_requests")
    upscale_delay_s: float = _knob(ReplicaSpec, "upscale_delay_s")
    downscale_delay_s: float = _knob(ReplicaSpec, "downscale_delay_s")
    priority: Priority = Field(default=Priority.RESERVED, description="reserved, burst or bank (compute bank).")


class SliceCreate(SliceKnobs, _Input):
    slug: str = Field(description="Topic-safe slice name, unique per tenant.")
    line_ids: list[RowId] = Field(
        min_length=1, max_length=100, description="Lines (all on one site) whose frames the slice judges."
    )
    model_version_id: RowId = Field(description="Model version (the tenant's own or a public one).")
    _check_slug = field_validator("slug")(_slug)
    _bounds = model_validator(mode="after")(_replica_bounds)


class SliceScale(_Input):
    min_replicas: int = _knob(ReplicaSpec, "min_replicas", required=True)
    max_replicas: int = _knob(ReplicaSpec, "max_replicas", required=True)
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
    price_per_replica_hour: float = 0.0  # set by the control plane from the catalogue, never by callers
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
    price_per_replica_hour: float
    credential_epoch: int = Field(description="Bumped each time the ingress's broker credentials rotate.")
    status: SliceStatus
    status_message: str
    generation: int
    observed_generation: int
    actual: dict[str, Any]


# --- capacity: order plans, profiles, scale events --------------------------------------------


class ShiftIn(_Input):
    name: str = Field(min_length=1, max_length=50, description="e.g. 'early'.")
    days: list[int] = Field(min_length=1, description="Weekdays, 0 = Monday.")
    start: str = Field(description="HH:MM local plant time.")
    end: str = Field(description="HH:MM; before start = past midnight.")

    _times = field_validator("start", "end")(lambda v: _hhmm(v))

    _days = field_validator("days")(lambda v: _weekdays(v))


class VolumeIn(_Input):
    effective_from: date = Field(description="First day this volume applies.")
    parts_per_shift: int = Field(ge=0, le=10_000_000, description="Parts made in each shift from that day on.")


class OrderPlanIn(_Input):
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


# --- telemetry: what the slices saw, for the dashboard -----------------------------------------


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


class FailedPartPublic(SQLModel):
    id: int
    line_id: int
    robot: str
    frame_id: str
    at: datetime
    defect_class: str | None
    score: float
