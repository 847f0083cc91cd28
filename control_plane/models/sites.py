"""Sites (a plant with its MQTT broker), join tokens, and the edge nodes that join them, with the
compute bank's lending windows and the statuses an operator may set.

A node belongs to the platform operator (``owner_tenant_id`` null) or to a tenant: a factory's own edge
servers, or a lab that lends its GPUs. The owner comes from the join token that joined it."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import field_validator
from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from control_plane.models._common import Input, hhmm, topic_safe_name, utcnow, weekdays
from control_plane.states import NodeStatus

DEFAULT_REGION = "default"


class SiteWan(Input):
    """Where a site is, and how other sites' overflow replicas reach its broker."""

    region: str = Field(
        default=DEFAULT_REGION,
        description="Topic-safe region name, e.g. 'west'. Slices may overflow only into the regions they list.",
    )
    wan_broker_host: str | None = Field(
        default=None,
        max_length=255,
        description="Host other sites reach this site's broker at (their overflow ingresses and round-trip "
        "probes); default broker_host.",
    )
    wan_broker_port: int | None = Field(default=None, gt=0, lt=65536, description="Port of wan_broker_host.")
    _check_region = field_validator("region")(topic_safe_name)


class SiteCreate(SiteWan):
    name: str = Field(description="Topic-safe site name, e.g. 'plant-north'.")
    broker_host: str = Field(default="127.0.0.1", max_length=255, description="The site's MQTT broker host.")
    broker_port: int = Field(default=1883, gt=0, lt=65536, description="The site's MQTT broker port.")
    _check_name = field_validator("name")(topic_safe_name)


class Site(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=63)
    broker_host: str = Field(max_length=255)
    broker_port: int
    created_at: datetime = Field(default_factory=utcnow)
    region: str = Field(default=DEFAULT_REGION, max_length=63, sa_column_kwargs={"server_default": DEFAULT_REGION})
    wan_broker_host: str | None = Field(default=None, max_length=255)
    wan_broker_port: int | None = None

    @property
    def wan_address(self) -> tuple[str, int]:
        """(host, port) other sites reach this site's broker at."""
        return self.wan_broker_host or self.broker_host, self.wan_broker_port or self.broker_port


class SitePublic(SQLModel):
    id: int
    name: str
    broker_host: str
    broker_port: int
    region: str
    wan_broker_host: str | None
    wan_broker_port: int | None


LINK_STALE_S = 600
"""A measured round trip older than this is unknown again: no overflow rides on it."""


class SiteLink(SQLModel, table=True):
    """The round trip from one site (``site_id``, where its agent measured it) to another's broker."""

    site_id: int = Field(foreign_key="site.id", primary_key=True)
    peer_site_id: int = Field(foreign_key="site.id", primary_key=True)
    measured_rtt_ms: float | None = None
    measured_at: datetime | None = None
    pinned_rtt_ms: float | None = None  # an operator's figure; wins over the measured one


class SiteLinkPublic(SQLModel):
    site_id: int
    peer_site_id: int
    measured_rtt_ms: float | None = Field(description="Median MQTT CONNECT/CONNACK round trip the agent measured.")
    measured_at: datetime | None
    pinned_rtt_ms: float | None = Field(description="The operator's figure, which wins over the measured one.")
    rtt_ms: float | None = Field(description="What overflow uses: pinned, else measured within the last 10 minutes.")


class SiteLinkPin(Input):
    rtt_ms: float | None = Field(
        ge=0, le=60_000, description="Round trip to pin in ms; null: use the agents' measurements again."
    )


class BrokerAdmin(SQLModel):
    username: str
    password: str = Field(description="Dynamic-security admin password the site's Mosquitto must be set up with.")


class JoinToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    owner_tenant_id: int | None = Field(default=None, foreign_key="tenant.id")  # the nodes it joins are this tenant's
    token_hash: str = Field(unique=True, index=True, max_length=64)
    expires_at: datetime
    used_at: datetime | None = None


class JoinTokenIssued(SQLModel):
    site_id: int
    owner_tenant_id: int | None = Field(description="The tenant that will own the node it joins; null: the operator.")
    token: str = Field(description="One-time token for `lineside edge-node join`; shown once.")
    expires_at: datetime


class Node(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    owner_tenant_id: int | None = Field(default=None, foreign_key="tenant.id", index=True)  # None: the operator's
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
    notice_s: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # replicas' notice before they leave
    held_until: datetime | None = None  # draining: its replicas stay until then while replacements start elsewhere
    bank_until: datetime | None = None  # its owner's slices need its room: other tenants' replicas leave by then


class NodePublic(SQLModel):
    id: int
    site_id: int
    owner_tenant_id: int | None = Field(description="The tenant that owns the node; null: the platform operator.")
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
    notice_s: int = Field(description="Seconds its replicas keep running after a reclaim or before a window ends, "
                                      "while their replacements start elsewhere.")  # fmt: skip
    held_until: datetime | None = Field(description="Draining: when its last replicas stop (null: drained at once).")
    bank_until: datetime | None = Field(
        description="Its owner's slices need its room: other tenants' bank "
        "replicas leave by then (their replacements start elsewhere)."
    )


class NodeJoined(NodePublic):
    node_token: str = Field(description="The agent's credential for heartbeats and desired state; shown once.")


class WindowIn(Input):
    days: list[int] = Field(min_length=1, description="Weekdays, 0 = Monday.")
    start: str = Field(description="HH:MM local time the node becomes available.")
    end: str = Field(description="HH:MM; before start = the next morning.")

    _days = field_validator("days")(weekdays)
    _times = field_validator("start", "end")(hhmm)


MAX_NOTICE_S = 7 * 24 * 3600


class NodeContribution(Input):
    """A contributed node (the compute bank) and when its owner lends it."""

    contributed: bool = Field(description="True: the node runs only bank slices, inside its windows.")
    windows: list[WindowIn] = Field(default_factory=list, max_length=50)
    holidays: list[date] = Field(default_factory=list, max_length=400, description="Whole days available.")
    notice_s: int = Field(
        default=0,
        ge=0,
        le=MAX_NOTICE_S,
        description="Notice its bank replicas get before a "
        "window ends or a reclaim, in seconds (their replacements start elsewhere meanwhile).",
    )


OPERATOR_NODE_STATUSES = (NodeStatus.DRAINING, NodeStatus.ONLINE, NodeStatus.REMOVED)
"""The node statuses an operator may set; the agent's heartbeats and the monitor set the others."""


class NodeStatusChange(Input):
    status: NodeStatus = Field(description="draining, online (undrain) or removed.")
    notice_s: int | None = Field(default=None, ge=0, le=MAX_NOTICE_S, description="Draining: seconds the node's "
                                 "replicas keep running while replacements start elsewhere; default its notice_s, "
                                 "0 = move them now.")  # fmt: skip

    @field_validator("status")
    @classmethod
    def _operators_may_set(cls, value: NodeStatus) -> NodeStatus:
        if value not in OPERATOR_NODE_STATUSES:
            raise ValueError(f"operators may set draining, online or removed; {value.value} is set by the agent")
        return value
