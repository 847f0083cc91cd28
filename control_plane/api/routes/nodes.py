"""Nodes (``/nodes``): the machines that joined a site.

A node is the operator's or a tenant's (``owner_tenant_id``): a factory's own edge servers, or a lab that
lends its GPUs. Operators see and manage every node. A tenant's edge operators see only their tenant's
(another owner's node answers 404, like a missing one): they lend its windows to the compute bank, take it
back (drain) and return it (undrain); removing a node stays the operators'. Each change re-places the
site's slices (``placement.place_site``), and a node leaving (drained, removed) rotates the site's
slice-ingress credentials.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from sqlmodel import Session, select

from control_plane import placement
from control_plane.api.deps import IdFilter, IdPath, NowDep, PageDep, SessionDep, SettingsDep, allowed, get_or_404
from control_plane.errors import BrokerUnavailable, Forbidden, NotFound
from control_plane.models import Node, NodeContribution, NodePublic, NodeStatusChange, Site
from control_plane.security import Permission, Principal
from control_plane.sites import live_slices, node_left, rotate_ingress
from control_plane.states import NodeStatus, transition

router = APIRouter(prefix="/nodes", tags=["nodes"])


def owned_node(session: Session, node_id: int, caller: Principal) -> Node:
    """The node if the caller may see it (operators: any; edge operators: their tenant's), else 404."""
    node = get_or_404(session, Node, node_id)
    if not caller.is_operator and (node.owner_tenant_id is None or node.owner_tenant_id != caller.tenant_id):
        raise NotFound(f"node {node_id} not found")
    return node


@router.get("", response_model=list[NodePublic])
def list_nodes(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.LEND_NODES, "listing nodes")],
    page: PageDep,
    site_id: IdFilter = None,
) -> list[Node]:
    """Operators see every node; edge operators their tenant's own. By id, paged (X-Next-Cursor)."""
    query = select(Node)
    if not caller.is_operator:
        query = query.where(Node.owner_tenant_id == caller.tenant_id)
    if site_id is not None:
        query = query.where(Node.site_id == site_id)
    return page.of(session, query, Node)


@router.get("/{node_id}", response_model=NodePublic)
def get_node(
    node_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.LEND_NODES, "reading nodes")],
) -> Node:
    return owned_node(session, node_id, caller)


@router.post("/{node_id}/status", response_model=NodePublic)
def change_node_status(
    node_id: IdPath,
    body: NodeStatusChange,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.LEND_NODES, "changing node status")],
    now: NowDep,
) -> Node:
    """Drain (``draining``: an owner taking its node back), undrain (``online``) or remove a node (operators
    only); illegal moves answer 409 (a status only the agent sets is refused by ``NodeStatusChange``: 422).

    A drain with notice (``notice_s``, default the node's) keeps the node's replicas running until
    ``held_until`` while their replacements start elsewhere; undraining before then changes nothing.

    An operator's node that has left (removed, or drained) rotates the site's slice-ingress credentials: it
    must not keep a password that reads tenants' frames. A tenant's node never gets one (it joins as a Ray
    worker only), and a node draining with notice keeps serving, so neither rotates until it has left.
    """
    node = owned_node(session, node_id, caller)
    if body.status is NodeStatus.REMOVED and not caller.is_operator:
        raise Forbidden(f"removing a node needs the operator role; your token is {caller.role.value} (drain it)")
    node.status = transition(node.status, body.status, what=f"node {node.id} ({node.hostname})")
    notice = node.notice_s if body.notice_s is None else body.notice_s
    node.held_until = placement.deadline(now, notice) if body.status is NodeStatus.DRAINING and notice else None
    session.commit()
    site = get_or_404(session, Site, node.site_id)
    unsynced = None
    placement.place_site(session, site, now)
    session.refresh(node)
    # Once the node has left (removed, or drained: at once without notice, else when the notice ends, see
    # ``app._apply_plans``), an operator's node must not keep a password that reads tenants' frames.
    if node_left(node):
        try:
            rotate_ingress(session, settings, site, live_slices(session, site), f"node {node.id} {node.status.value}")
        except BrokerUnavailable as e:
            unsynced = e
    if unsynced is not None:
        raise BrokerUnavailable(
            f"node {node.id} is {node.status.value} and its site's slice credentials were rotated, but the site "
            f"broker did not take them ({unsynced.message}); POST /sites/{site.id}/broker/sync once it answers"
        ) from unsynced
    session.refresh(node)
    return node


@router.put("/{node_id}/contribution", response_model=NodePublic)
def set_contribution(
    node_id: IdPath,
    body: NodeContribution,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.LEND_NODES, "declaring contributed nodes")],
    now: NowDep,
) -> Node:
    """Declare a node part of the compute bank and when it is lent (e.g. weekdays 20:00-07:00, holidays).

    Outside its windows a tenant's node runs only its owner's slices (which may use it at any time)."""
    node = owned_node(session, node_id, caller)
    node.contributed = body.contributed
    node.windows = [w.model_dump() for w in body.windows]
    node.holidays = [d.isoformat() for d in body.holidays]
    node.notice_s = body.notice_s
    session.commit()
    placement.place_site(session, get_or_404(session, Site, node.site_id), now)
    session.refresh(node)
    return node
