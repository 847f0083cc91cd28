"""Sites (one Ray cluster and one broker each), their join tokens and nodes. Operators provision."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from sqlmodel import select

from control_plane import broker_sync, placement
from control_plane.api.deps import CurrentUser, IdFilter, IdPath, NowDep, PageDep, SessionDep, SettingsDep, insert
from control_plane.errors import BrokerUnavailable, Conflict, NotFound
from control_plane.models import (
    BrokerAdmin,
    JoinToken,
    JoinTokenIssued,
    Node,
    NodeContribution,
    NodePublic,
    NodeStatusChange,
    ScaleEvent,
    ScaleEventPublic,
    ScaleKind,
    Site,
    SiteCreate,
    SitePublic,
    utcnow,
)
from control_plane.security import CAN, new_token, token_hash
from control_plane.sites import broker_admin_password, live_slices, rotate_ingress, sync_broker
from control_plane.states import NodeStatus, transition

router = APIRouter(tags=["sites and nodes"])


def _site(session: SessionDep, site_id: int) -> Site:
    site = session.get(Site, site_id)
    if site is None:
        raise NotFound(f"site {site_id} not found")
    return site


@router.post("/sites", response_model=SitePublic, status_code=201)
def create_site(body: SiteCreate, session: SessionDep, caller: CurrentUser) -> Site:
    caller.require(*CAN["manage_sites"], action="creating sites")
    return insert(session, Site(**body.model_dump()), conflict=f"site {body.name!r} already exists")


@router.get("/sites", response_model=list[SitePublic])
def list_sites(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[Site]:
    """Every role sees site names and brokers (lines are placed on a site); by id, paged (X-Next-Cursor)."""
    caller.require(*CAN["read_sites"], action="listing sites")
    return page.of(session, select(Site), Site)


@router.get("/sites/{site_id}", response_model=SitePublic)
def get_site(site_id: IdPath, session: SessionDep, caller: CurrentUser) -> Site:
    caller.require(*CAN["read_sites"], action="reading sites")
    return _site(session, site_id)


@router.get("/sites/{site_id}/broker-admin", response_model=BrokerAdmin)
def get_broker_admin(site_id: IdPath, session: SessionDep, settings: SettingsDep, caller: CurrentUser) -> BrokerAdmin:
    """The dynamic-security admin the site's Mosquitto must have (``lineside broker run`` sets it up)."""
    caller.require(*CAN["manage_sites"], action="reading broker admin credentials")
    site = _site(session, site_id)
    return BrokerAdmin(username=broker_sync.ADMIN_USERNAME, password=broker_admin_password(settings, site))


@router.post("/sites/{site_id}/broker/sync")
def sync_site_broker(site_id: IdPath, session: SessionDep, settings: SettingsDep,
                     caller: CurrentUser) -> dict[str, int]:  # fmt: skip
    """Make the site's broker hold exactly the active robots and slices (e.g. after a broker rebuild)."""
    caller.require(*CAN["manage_sites"], action="syncing a broker")
    return sync_broker(session, settings, _site(session, site_id))


@router.post("/sites/{site_id}/join-tokens", response_model=JoinTokenIssued, status_code=201)
def create_join_token(site_id: IdPath, session: SessionDep, settings: SettingsDep,
                      caller: CurrentUser) -> JoinTokenIssued:  # fmt: skip
    """A one-time token for ``lineside edge-node join``; shown once."""
    caller.require(*CAN["manage_nodes"], action="creating join tokens")
    _site(session, site_id)
    token = new_token("join")
    expires = utcnow() + timedelta(seconds=settings.join_token_ttl_s)
    session.add(JoinToken(site_id=site_id, token_hash=token_hash(token), expires_at=expires))
    session.commit()
    return JoinTokenIssued(site_id=site_id, token=token, expires_at=expires)


@router.get("/nodes", response_model=list[NodePublic])
def list_nodes(session: SessionDep, caller: CurrentUser, page: PageDep, site_id: IdFilter = None) -> list[Node]:
    """Only operators see nodes: they carry every tenant's slices. By id, paged (X-Next-Cursor)."""
    caller.require(*CAN["manage_nodes"], action="listing nodes")
    query = select(Node)
    if site_id is not None:
        query = query.where(Node.site_id == site_id)
    return page.of(session, query, Node)


@router.get("/nodes/{node_id}", response_model=NodePublic)
def get_node(node_id: IdPath, session: SessionDep, caller: CurrentUser) -> Node:
    caller.require(*CAN["manage_nodes"], action="reading nodes")
    node = session.get(Node, node_id)
    if node is None:
        raise NotFound(f"node {node_id} not found")
    return node


@router.post("/nodes/{node_id}/status", response_model=NodePublic)
def change_node_status(
    node_id: IdPath, body: NodeStatusChange, session: SessionDep, settings: SettingsDep, caller: CurrentUser,
    now: NowDep,
) -> Node:  # fmt: skip
    """Drain (``draining``), undrain (``online``) or remove a node; illegal moves answer 409.

    Draining and removing rotate the site's slice-ingress credentials: a node leaving the operators'
    hands must not keep a password that reads tenants' frames.
    """
    caller.require(*CAN["manage_nodes"], action="changing node status")
    node = get_node(node_id, session, caller)
    if body.status not in (NodeStatus.DRAINING, NodeStatus.ONLINE, NodeStatus.REMOVED):
        raise Conflict(f"operators may set draining, online or removed; {body.status.value} is set by the agent")
    node.status = transition(node.status, body.status, what=f"node {node.id} ({node.hostname})")
    session.commit()
    site = _site(session, node.site_id)
    unsynced = None
    if body.status in (NodeStatus.DRAINING, NodeStatus.REMOVED):
        try:
            rotate_ingress(session, settings, site, live_slices(session, site), f"node {node.id} {body.status.value}")
        except BrokerUnavailable as e:
            unsynced = e
    placement.place_site(session, site, now)
    if unsynced is not None:
        raise BrokerUnavailable(
            f"node {node.id} is {node.status.value} and its site's slice credentials were rotated, but the site "
            f"broker did not take them ({unsynced.message}); POST /sites/{site.id}/broker/sync once it answers"
        ) from unsynced
    session.refresh(node)
    return node


@router.get("/alerts", response_model=list[ScaleEventPublic])
def list_alerts(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[ScaleEvent]:
    """Reserved capacity that no longer fits anywhere, newest first (operators); paged (X-Next-Cursor)."""
    caller.require(*CAN["manage_nodes"], action="reading capacity alerts")
    query = select(ScaleEvent).where(ScaleEvent.kind == ScaleKind.ALERT)
    return page.of(session, query, ScaleEvent, newest_first=True)


@router.put("/nodes/{node_id}/contribution", response_model=NodePublic)
def set_contribution(node_id: IdPath, body: NodeContribution, session: SessionDep, caller: CurrentUser,
                     now: NowDep) -> Node:  # fmt: skip
    """Declare a node part of the compute bank and when it is lent (e.g. weekdays 20:00-07:00, holidays)."""
    caller.require(*CAN["manage_nodes"], action="declaring contributed nodes")
    node = get_node(node_id, session, caller)
    node.contributed = body.contributed
    node.windows = [w.model_dump() for w in body.windows]
    node.holidays = [d.isoformat() for d in body.holidays]
    session.commit()
    placement.place_site(session, _site(session, node.site_id), now)
    session.refresh(node)
    return node
