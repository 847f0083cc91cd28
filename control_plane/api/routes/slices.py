"""Slices (``/slices``): a tenant's rented capacity on a site. Plant managers buy, scale and release them;
their planned floors, scale events and capacity over time are read here too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from control_plane import capacity, catalogue, dashboard, funds, placement, rollouts, sites
from control_plane.api.deps import (
    IdPath,
    NowDep,
    PageDep,
    SessionDep,
    SettingsDep,
    allowed,
    get_or_404,
    own_tenant,
    scoped_get,
)
from control_plane.api.routes.models import visible_model
from control_plane.errors import Conflict, InvalidInput
from control_plane.models import (
    Line,
    Product,
    RolloutState,
    ScaleEvent,
    ScaleEventPublic,
    ScaleKind,
    Site,
    Slice,
    SliceCreate,
    SliceOverflow,
    SlicePublic,
    SliceScale,
    utcnow,
)
from control_plane.scheduler import Priority
from control_plane.security import Permission, Principal
from control_plane.settings import ControlPlaneSettings
from control_plane.states import SliceStatus, transition

router = APIRouter(prefix="/slices", tags=["slices"])


def _push_ingress(session: Session, settings: ControlPlaneSettings, item: Slice) -> None:
    site = session.get(Site, item.site_id)
    assert site is not None
    with sites.admin(settings, site) as broker:
        for client in sites.ingress_broker_clients(session, settings, item):
            broker.ensure(client)


@router.post("", response_model=SlicePublic, status_code=201)
def create_slice(
    body: SliceCreate,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SLICES, "buying capacity (creating slices)")],
    now: NowDep,
) -> Slice:
    """Rent capacity for some of your lines; the site's agent starts it and reports its status."""
    lines = [scoped_get(session, Line, line_id, caller) for line_id in body.line_ids]
    site_ids = {line.site_id for line in lines}
    if len(site_ids) != 1:
        raise InvalidInput(f"a slice serves lines of one site; lines {body.line_ids} are on sites {sorted(site_ids)}")
    model = visible_model(session, body.model_version_id, caller)
    if model.fixed_batch is not None and body.max_batch_size > model.fixed_batch:
        raise InvalidInput(f"model {model.name} {model.version} takes batches of {model.fixed_batch}; "
                           f"max_batch_size {body.max_batch_size} is too large")  # fmt: skip
    assert caller.tenant_id is not None
    funds.refuse_if_out_of_funds(session, caller.tenant_id)
    site_id = site_ids.pop()
    product = catalogue.default_product(session, site_id) if body.product_id is None else \
        get_or_404(session, Product, body.product_id)  # fmt: skip
    item = Slice(tenant_id=caller.tenant_id, site_id=site_id,
                 **body.model_dump(exclude={"product_id", "price_id"}))  # fmt: skip
    session.add(item)
    try:
        session.flush()
    except IntegrityError as e:
        raise Conflict(f"slice {body.slug!r} already exists in your tenant") from e
    catalogue.buy(session, item, product, price_id=body.price_id, now=now.astimezone(UTC), user_id=caller.user_id)
    _push_ingress(session, settings, item)
    session.commit()
    _place(session, item, now)
    session.refresh(item)
    return item


def _place(session: Session, item: Slice, now: datetime) -> None:
    site = session.get(Site, item.site_id)
    assert site is not None
    placement.place_site(session, site, now)


@router.get("", response_model=list[SlicePublic])
def list_slices(
    session: SessionDep, caller: Annotated[Principal, allowed(Permission.READ_SLICES, "listing slices")], page: PageDep
) -> list[Slice]:
    """Your tenant's slices by id (operators: all), a page at a time (X-Next-Cursor)."""
    return page.of(session, own_tenant(select(Slice), Slice, caller), Slice)


@router.get("/{slice_id}", response_model=SlicePublic)
def get_slice(
    slice_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_SLICES, "reading slices")],
) -> Slice:
    return scoped_get(session, Slice, slice_id, caller)


@router.post("/{slice_id}/scale", response_model=SlicePublic)
def scale_slice(
    slice_id: IdPath,
    body: SliceScale,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SLICES, "scaling capacity")],
    now: NowDep,
) -> Slice:
    """Move the replica bounds; the agent applies the new generation."""
    item = scoped_get(session, Slice, slice_id, caller)
    reason = f"set by user {caller.user_id}"
    capacity.record(session, item, ScaleKind.MANUAL, body.min_replicas, body.max_replicas, reason)
    session.commit()
    _place(session, item, now)
    session.refresh(item)
    return item


@router.put("/{slice_id}/overflow", response_model=SlicePublic)
def set_overflow(
    slice_id: IdPath,
    body: SliceOverflow,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SLICES, "letting a slice overflow to other sites")],
    now: NowDep,
) -> Slice:
    """The regions whose sites may run this burst or bank slice's replicas while its home site is full
    (empty: it stays home). A reserved slice never leaves its site: 409."""
    item = scoped_get(session, Slice, slice_id, caller)
    if body.regions and item.priority is Priority.RESERVED:
        raise Conflict(f"slice {item.slug} is reserved capacity, which stays on its site; "
                       "make it burst or bank to let it overflow")  # fmt: skip
    item.overflow_regions = body.regions
    item.updated_at = utcnow()
    _push_ingress(session, settings, item)  # the logins each overflow site's ingress uses on the home broker
    session.commit()
    _place(session, item, now)
    session.refresh(item)
    return item


@router.delete("/{slice_id}", response_model=SlicePublic)
def delete_slice(
    slice_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SLICES, "releasing capacity")],
    now: NowDep,
) -> Slice:
    """Release the capacity: the agent removes the application, then the slice is ``deleted``; its room goes
    to the site's other slices at once (one running elsewhere for want of room comes home)."""
    item = scoped_get(session, Slice, slice_id, caller)
    item.status = transition(item.status, SliceStatus.DELETING, what=f"slice {item.slug}")
    item.updated_at = utcnow()
    if item.id is not None and (rollout := rollouts.running(session, item.id)) is not None:
        rollouts.stop(session, item, rollout, RolloutState.ABORTED, "the slice was released", item.updated_at)
    site = session.get(Site, item.site_id)
    assert site is not None
    with sites.admin(settings, site) as broker:
        for client in sites.ingress_broker_clients(session, settings, item):
            broker.remove(client.username)
    session.commit()
    _place(session, item, now)
    session.refresh(item)
    return item


@router.post("/{slice_id}/credentials/rotate", response_model=SlicePublic)
def rotate_credentials(
    slice_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.ROTATE_SLICE_CREDENTIALS, "rotating a slice's broker credentials")],
) -> Slice:
    """New broker passwords for the slice's ingress (e.g. a node was lost or stolen): the old ones stop
    working at once and their sessions are disconnected; the site's agent restarts the ingress with the new."""
    item = scoped_get(session, Slice, slice_id, caller)
    if item.status not in sites.LIVE_SLICES:
        raise Conflict(f"slice {item.slug} is {item.status.value}: it has no broker credentials to rotate")
    site = session.get(Site, item.site_id)
    assert site is not None
    sites.rotate_ingress(session, settings, site, [item], f"asked by user {caller.user_id}")
    session.refresh(item)
    return item


# --- capacity: planned floors, scale events, the capacity chart --------------------------------


@router.get("/{slice_id}/plan")
def get_slice_plan(
    slice_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_SLICES, "reading capacity plans")],
    now: NowDep,
    days: int = Query(default=7, ge=1, le=31),
) -> dict[str, Any]:
    """Planned floors per shift window for the slice's lines, with the lease cap and what more would cost."""
    item = scoped_get(session, Slice, slice_id, caller)
    planned = capacity.planned_floor(session, item, now)
    return {
        "slice_id": slice_id,
        "now": now.isoformat(),
        "floor_now": planned[0] if planned else None,
        "why": planned[1] if planned else "no order plan or no measured profile yet",
        **capacity.slice_windows(session, item, now - timedelta(hours=1), days),
    }


@router.get("/{slice_id}/events", response_model=list[ScaleEventPublic])
def list_scale_events(
    slice_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_SLICES, "reading scale events")],
    page: PageDep,
) -> list[ScaleEvent]:
    """Every change of the slice's bounds with its reason, newest first; paged (X-Next-Cursor)."""
    scoped_get(session, Slice, slice_id, caller)
    query = select(ScaleEvent).where(ScaleEvent.slice_id == slice_id)
    return page.of(session, query, ScaleEvent, newest_first=True)


@router.get("/{slice_id}/capacity")
def capacity_chart(
    slice_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_SLICES, "reading capacity")],
    now: NowDep,
    hours_back: int = Query(default=24, ge=1, le=24 * 7),
    hours_ahead: int = Query(default=24, ge=1, le=24 * 7),
) -> dict[str, Any]:
    """Planned demand, replica floor, running replicas and lease limit over time, with a text summary."""
    item = scoped_get(session, Slice, slice_id, caller)
    return dashboard.capacity_series(session, item, now, hours_back, hours_ahead)
