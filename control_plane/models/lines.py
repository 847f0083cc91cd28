"""Production lines (with their robots' frame policy) and the robots that send frames on them."""

from __future__ import annotations

from datetime import datetime

from pydantic import field_validator
from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from contracts.slice_spec import FramePolicy, SliceSpec
from control_plane.models._common import Input, RowId, field_from, topic_safe_name, utcnow
from control_plane.states import RobotStatus

ROBOT_MAX_FPS_HELP = "Frames per second each robot of the line may send; beyond it frames are answered rate_limited."
ROBOT_MAX_FRAME_BYTES_HELP = "Largest frame (bytes) a robot of the line may send; larger ones are answered too_large."


class LineKnobs(SQLModel):
    """A line's latency budget and its robots' frame policy, written once: set (``LineCreate``), stored
    (``Line``), shown (``LinePublic``); ``LineUpdate`` takes them as optional. Defaults are the edge's
    (``contracts.slice_spec``): the line's policy is what its slices' ingress enforces."""

    latency_budget_ms: float = field_from(SliceSpec, "latency_budget_ms", le=60_000)
    robot_max_fps: float = field_from(FramePolicy, "max_fps", description=ROBOT_MAX_FPS_HELP)
    robot_max_frame_bytes: int = field_from(FramePolicy, "max_frame_bytes", ge=1024,
                                            description=ROBOT_MAX_FRAME_BYTES_HELP)  # fmt: skip


class LineCreate(LineKnobs, Input):
    slug: str = Field(description="Topic-safe line name, e.g. 'line-1'.")
    name: str = Field(default="", max_length=200)
    site_id: RowId = Field(description="Site whose slices serve this line.")
    _check_slug = field_validator("slug")(topic_safe_name)


class LineUpdate(Input):
    """Fields of a line that may change; omitted ones keep their value."""

    name: str | None = Field(default=None, max_length=200)
    latency_budget_ms: float | None = field_from(LineKnobs, "latency_budget_ms", default=None)
    robot_max_fps: float | None = field_from(LineKnobs, "robot_max_fps", default=None)
    robot_max_frame_bytes: int | None = field_from(LineKnobs, "robot_max_frame_bytes", default=None)


class Line(LineKnobs, table=True):
    __table_args__ = (UniqueConstraint("tenant_id", "slug"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    slug: str = Field(max_length=63)
    name: str = Field(default="", max_length=200)


class LinePublic(LineKnobs):
    id: int
    tenant_id: int
    site_id: int
    slug: str
    name: str


class RobotCreate(Input):
    slug: str = Field(description="Topic-safe robot name, e.g. 'cam-7'.")
    line_id: RowId = Field(description="Line the robot inspects on.")
    _check_slug = field_validator("slug")(topic_safe_name)


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


class LineWatcher(SQLModel):
    """``POST /lines/{id}/watcher``: read-only broker credentials for every robot's answers on the line."""

    line_id: int
    username: str = Field(description="Username and the only client id it may connect with.")
    password: str = Field(description="Derived from the control plane's key: the same each time it is asked.")
    broker_host: str
    broker_port: int
    topics: dict[str, str] = Field(description="results, errors, status: filters over the line's robots.")
    examples: dict[str, str] = Field(description="Ready-to-run mosquitto_sub and `lineside bridge opcua`.")
