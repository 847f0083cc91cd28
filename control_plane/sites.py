"""Desired state of a site, derived from the database: broker clients and Ray Serve slices.

The agent pulls ``desired_state`` (with an ETag over its content); the broker
is driven from here through ``broker_sync``. Both are level-triggered: they
describe the whole site, so applying them twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, select

from contracts.agent_api import DesiredSlice, DesiredState, PeerBroker
from contracts.slice_spec import NODE_RESOURCE_PREFIX, BatchSpec, knob_sections
from control_plane import broker_sync, rollouts
from control_plane.broker_sync import overflow_username
from control_plane.errors import BrokerUnavailable
from control_plane.models import Line, ModelVersion, Node, Robot, Site, Slice, Tenant, TenantBilling, utcnow
from control_plane.scheduler import Priority
from control_plane.security import derived_secret
from control_plane.settings import ControlPlaneSettings
from control_plane.states import NodeStatus, RobotStatus, SliceStatus, transition

log = logging.getLogger(__name__)

LIVE_SLICES = (SliceStatus.PENDING, SliceStatus.RUNNING, SliceStatus.DEGRADED, SliceStatus.FAILED)
INGRESS_REPLICAS = 1
"""Ingress replicas per slice (one keeps up with a line; the model deployment is what scales)."""


def _secret(settings: ControlPlaneSettings, purpose: str) -> str:
    return derived_secret(settings.key, purpose)


def broker_admin_password(settings: ControlPlaneSettings, site: Site) -> str:
    return _secret(settings, f"broker-admin:{site.id}")


def robot_password(settings: ControlPlaneSettings, robot: Robot) -> str:
    return _secret(settings, f"robot:{robot.id}:{robot.credential_epoch}")


def ingress_password(settings: ControlPlaneSettings, item: Slice) -> str:
    """The base secret of the slice's ingress logins; bumping ``credential_epoch`` rotates it."""
    return _secret(settings, f"ingress:{item.id}:{item.credential_epoch}")


def monitor_broker_client(settings: ControlPlaneSettings, site: Site) -> broker_sync.BrokerClient:
    """This control plane instance's login on the site's broker (telemetry and robots' status, read only)."""
    password = _secret(settings, f"monitor:{site.id}:{settings.instance}")
    return broker_sync.monitor_client(site.name, settings.instance, password)


def watcher_password(settings: ControlPlaneSettings, robot: Robot) -> str:
    return _secret(settings, f"watch:{robot.id}:{robot.credential_epoch}")


def line_watcher_password(settings: ControlPlaneSettings, line: Line) -> str:
    return _secret(settings, f"line-watch:{line.id}")


def line_watcher_client(session: Session, settings: ControlPlaneSettings, line: Line) -> broker_sync.BrokerClient:
    """The line's read-only watcher of every robot's answers (``broker_sync.line_watcher_client``)."""
    tenant = session.get(Tenant, line.tenant_id)
    assert tenant is not None
    return broker_sync.line_watcher_client(tenant.slug, line.slug, line_watcher_password(settings, line))


def robot_broker_clients(
    session: Session, settings: ControlPlaneSettings, robot: Robot
) -> list[broker_sync.BrokerClient]:
    """The robot's own client and its read-only watcher."""
    line = session.get(Line, robot.line_id)
    tenant = session.get(Tenant, robot.tenant_id)
    assert line is not None
    assert tenant is not None
    names = (tenant.slug, line.slug, robot.slug)
    return [
        broker_sync.robot_client(*names, robot_password(settings, robot)),
        broker_sync.watcher_client(*names, watcher_password(settings, robot)),
    ]


def slice_lines(session: Session, item: Slice) -> list[Line]:
    lines = session.exec(select(Line).where(col(Line.id).in_(item.line_ids)).order_by(col(Line.id))).all()
    return list(lines)


def remote_ingress_password(settings: ControlPlaneSettings, item: Slice, site_id: int) -> str:
    """The base secret of the logins an overflow site's ingress has on the slice's home broker: one per site,
    so a remote site's head can derive no login of the home ingress, nor of another site's."""
    return _secret(settings, f"ingress:{item.id}:{item.credential_epoch}:site:{site_id}")


def overflow_sites(session: Session, item: Slice) -> list[Site]:
    """The other sites in the slice's overflow regions: each gets ingress logins on the home broker."""
    if not item.overflow_regions:
        return []
    query = select(Site).where(col(Site.region).in_(item.overflow_regions), Site.id != item.site_id)
    return list(session.exec(query.order_by(col(Site.id))).all())


def ingress_broker_clients(
    session: Session, settings: ControlPlaneSettings, item: Slice
) -> list[broker_sync.BrokerClient]:
    """The slice's ingress logins on its home broker: its own, and one set per site it may overflow to."""
    tenant = session.get(Tenant, item.tenant_id)
    assert tenant is not None
    lines = [line.slug for line in slice_lines(session, item)]
    base = ingress_password(settings, item)
    clients = broker_sync.ingress_clients(item.app_name, tenant.slug, lines, base, INGRESS_REPLICAS)
    for site in overflow_sites(session, item):
        assert site.id is not None
        remote, prefix = remote_ingress_password(settings, item, site.id), overflow_username(item.app_name, site.id)
        clients += broker_sync.ingress_clients(item.app_name, tenant.slug, lines, remote, INGRESS_REPLICAS,
                                               login_prefix=prefix)  # fmt: skip
    return clients


def ingress_node_id(session: Session, site: Site) -> int | None:
    """The node whose agent applies the site's slices, so runs their ingress: the Ray head.

    A head joins without ``--ray-address`` (workers name the head's); with several (a reinstalled
    head), the one heard from last. Only this node is sent the ingress's broker password, so it is always
    one of the operator's: a tenant's node (a lab's, a factory's) never is, whatever it claims.
    """
    head = session.exec(
        select(Node)
        .where(
            Node.site_id == site.id,
            Node.status != NodeStatus.REMOVED,
            col(Node.ray_address).is_(None),
            col(Node.owner_tenant_id).is_(None),
        )
        .order_by(col(Node.last_heartbeat_at).desc(), col(Node.id).desc())
    ).first()
    return head.id if head else None


def rotate_ingress(session: Session, settings: ControlPlaneSettings, site: Site, items: list[Slice], why: str) -> None:
    """New ingress passwords for ``items``: the database first, then the broker, which disconnects
    every session of the old ones. The head's agent picks the new password up on its next pull."""
    for item in items:
        item.credential_epoch += 1
        item.updated_at = utcnow()
        log.info("slice %s: ingress credentials rotated (%s)", item.slug, why)
    session.commit()
    with admin(settings, site) as broker:
        for item in items:
            for client in ingress_broker_clients(session, settings, item):
                broker.replace(client)


def node_left(node: Node) -> bool:
    """An operator's node that has left the site (drained or removed): its slices' ingress passwords rotate.
    A tenant's node joins as a Ray worker only and never receives them."""
    return node.owner_tenant_id is None and node.status in (NodeStatus.DRAINED, NodeStatus.REMOVED)


def rotate_after_drains(session: Session, settings: ControlPlaneSettings, drained: dict[int, list[int]]) -> None:
    """Rotate the ingress passwords of each site where an operator's node finished draining (its notice over)."""
    for site_id, node_ids in drained.items():
        site = session.get(Site, site_id)
        left = [n for n in node_ids if (node := session.get(Node, n)) is not None and node_left(node)]
        if site is None or not left:
            continue
        try:
            rotate_ingress(session, settings, site, live_slices(session, site), f"node(s) {left} drained")
        except BrokerUnavailable:
            log.warning("site %s: node(s) %s drained but its broker did not take the rotated ingress passwords; "
                        "POST /sites/%s/broker/sync once it answers", site.name, left, site.id)  # fmt: skip


def live_slices(session: Session, site: Site) -> list[Slice]:
    query = select(Slice).where(Slice.site_id == site.id, col(Slice.status).in_(LIVE_SLICES)).order_by(col(Slice.id))
    return list(session.exec(query).all())


def admin(settings: ControlPlaneSettings, site: Site) -> broker_sync.DynsecAdmin:
    return broker_sync.DynsecAdmin(
        site.broker_host, site.broker_port, broker_admin_password(settings, site), settings.broker_timeout_s
    )


def desired_broker_clients(
    session: Session, settings: ControlPlaneSettings, site: Site
) -> list[broker_sync.BrokerClient]:
    robots = session.exec(
        select(Robot).join(Line).where(Line.site_id == site.id, Robot.status == RobotStatus.ACTIVE)
    ).all()
    lines = session.exec(select(Line).where(Line.site_id == site.id).order_by(col(Line.id))).all()
    return [
        monitor_broker_client(settings, site),
        *(line_watcher_client(session, settings, line) for line in lines),
        *(c for r in robots for c in robot_broker_clients(session, settings, r)),
        *(c for s in live_slices(session, site) for c in ingress_broker_clients(session, settings, s)),
    ]


def sync_broker(session: Session, settings: ControlPlaneSettings, site: Site) -> dict[str, int]:
    """Make the site's broker hold exactly the active robots and live slices."""
    with admin(settings, site) as broker:
        return broker.reconcile(desired_broker_clients(session, settings, site))


def slice_spec(
    session: Session, settings: ControlPlaneSettings, item: Slice, site: Site, *, secrets: bool
) -> DesiredSlice:
    """The desired slice as the agent of ``site`` applies it: a ``contracts.slice_spec.SliceSpec`` plus the model.

    Without ``secrets`` (any node but the ingress's) the broker password is left out. Only the fields
    set here travel (``DesiredSlice.content``); the agent's ``SliceSpec`` defaults fill in the rest.
    On a site that runs the slice's overflow (not its home), the ingress joins the home broker's shared
    subscription at its WAN address with that site's own login, the replicas are the ones placed there
    (all kept running while the overflow lasts), and rollouts stay at home.
    """
    tenant = session.get(Tenant, item.tenant_id)
    model = session.get(ModelVersion, item.model_version_id)
    home = site if site.id == item.site_id else session.get(Site, item.site_id)
    assert tenant is not None
    assert model is not None
    assert home is not None
    assert site.id is not None
    lines = slice_lines(session, item)
    away = home.id != site.id
    placed = overflow_remote_nodes(item, site.id) if away else item.placement
    pins = pinned_placement(session, site.id, placed)
    replicas_max = min(item.max_replicas, sum(pins.values())) if pins else item.max_replicas
    billing = session.get(TenantBilling, item.tenant_id)
    if billing is not None and billing.held and item.priority in (Priority.BURST, Priority.BANK):
        replicas_max = min(replicas_max, item.min_replicas)  # funds used up: held at its floor (billing.review)
    knobs = knob_sections(item.model_dump())  # the slice's knobs, in the spec's sections
    bounds = {"min_replicas": min(item.min_replicas, replicas_max), "max_replicas": replicas_max}
    if away:
        replicas_max = sum(placed.values())
        bounds = {"min_replicas": replicas_max, "max_replicas": replicas_max}
    elif item.overflow and not pins:  # Ray places freely here: no more than the scheduler found room for
        bounds["max_replicas"] = max(1, min(replicas_max, sum(placed.values())))
        bounds["min_replicas"] = min(bounds["min_replicas"], bounds["max_replicas"])
    host, port = home.wan_address if away else (home.broker_host, home.broker_port)
    if away:
        username = overflow_username(item.app_name, site.id)
        password = remote_ingress_password(settings, item, site.id)
    else:
        username, password = broker_sync.slice_username(item.app_name), ingress_password(settings, item)
    ingress_batch = min(BatchSpec.model_fields["ingress_batch"].default, item.max_batch_size)
    content: dict[str, Any] = {
        "slice_id": item.id,
        "generation": item.generation,
        "model": {"sha256": model.sha256, "manifest": model.manifest},
        "spec": {
            "name": item.app_name,
            "tenant": tenant.slug,
            "lines": [line.slug for line in lines],
            "ingress_replicas": INGRESS_REPLICAS,
            "latency_budget_ms": min(line.latency_budget_ms for line in lines),
            "replicas": knobs["replicas"] | bounds,
            "batch": knobs["batch"] | {"ingress_batch": ingress_batch},
            "resources": knobs["resources"],
            "placement": pins or None,
            "telemetry_period_s": settings.telemetry_period_s,
            "frame_policy": {
                line.slug: {"max_fps": line.robot_max_fps, "max_frame_bytes": line.robot_max_frame_bytes}
                for line in lines
            },
            "broker": {
                "host": host,
                "port": port,
                "username": username,
                "password": password if secrets else None,
                "connection_logins": True,
            },
        },
    }
    if away:
        content["home_site"] = home.name
    elif rollout := rollouts.desired(session, item):  # a rollout's candidate, beside the slice's model
        content["candidate"], content["spec"]["rollout"] = rollout["candidate"], rollout["rollout"]
    return DesiredSlice.model_validate(content)


def overflow_remote_nodes(item: Slice, site_id: int) -> dict[str, int]:
    """The slice's replicas placed on another site (``Slice.overflow``): node id -> replicas."""
    return dict(item.overflow.get(str(site_id), {}))


def overflowing_to(session: Session, site: Site) -> list[Slice]:
    """Live slices of other sites with replicas placed on ``site``."""
    query = select(Slice).where(col(Slice.status).in_(LIVE_SLICES), Slice.site_id != site.id)
    return [s for s in session.exec(query.order_by(col(Slice.id))).all() if overflow_remote_nodes(s, site.id or 0)]


def pinned_placement(session: Session, site_id: int, placed: dict[str, int]) -> dict[str, int]:
    """A placement on ``site_id``'s nodes as Ray resources, when every chosen node's raylet advertises its
    resource.

    Sites whose Ray nodes do not carry ``lineside_node_<id>`` (a demo on one machine) get no pinning:
    Ray places the replicas, within the slice's bounds.
    """
    if not placed:
        return {}
    nodes = session.exec(select(Node).where(Node.site_id == site_id)).all()
    advertised = {r for n in nodes for r in n.ray_resources}
    pins = {f"{NODE_RESOURCE_PREFIX}{node_id}": count for node_id, count in placed.items()}
    return pins if set(pins) <= advertised else {}


def peers(session: Session, site: Site) -> list[PeerBroker]:
    """Every other site's broker as this one reaches it, for the head's round-trip probes."""
    others = session.exec(select(Site).where(Site.id != site.id).order_by(col(Site.id))).all()
    return [PeerBroker(site_id=s.id, host=s.wan_address[0], port=s.wan_address[1]) for s in others if s.id]


def desired_state(session: Session, settings: ControlPlaneSettings, site: Site, node: Node) -> tuple[DesiredState, str]:
    """The site's desired slices (its own, then other sites' overflow placed here) as ``node`` may see them,
    and an ETag over what it is sent."""
    secrets = node.id is not None and node.id == ingress_node_id(session, site)
    # A slice whose replicas all run elsewhere has no ingress here: it would take its share of frames with no model.
    own = [s for s in live_slices(session, site) if s.placement or not s.overflow]
    slices = own + overflowing_to(session, site)
    state = DesiredState(
        site=site.name,
        slices=[slice_spec(session, settings, s, site, secrets=secrets) for s in slices],
        peers=peers(session, site),
    )
    etag = hashlib.sha256(json.dumps(state.content(), sort_keys=True).encode()).hexdigest()[:32]
    return state, etag


def mark_silent_nodes_offline(session: Session, timeout_s: float) -> list[int]:
    """Nodes whose last heartbeat is older than ``timeout_s`` become offline; returns their ids."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    silent = session.exec(
        select(Node).where(
            col(Node.status).in_((NodeStatus.ONLINE, NodeStatus.JOINING, NodeStatus.DRAINING, NodeStatus.DRAINED)),
            col(Node.last_heartbeat_at) < cutoff,
        )
    ).all()
    for node in silent:
        node.status = transition(node.status, NodeStatus.OFFLINE, what=f"node {node.id}")
        log.warning("node %s (%s) missed heartbeats for %.0fs: offline", node.id, node.hostname, timeout_s)
    session.commit()
    return [n.id for n in silent if n.id is not None]
