"""Production lines of a tenant (``/lines``); each is served from one site.

A line carries its robots' frame policy (frames per second and bytes per frame, per robot);
changing it gives the slices serving the line a new generation, so their ingress enforces it.
Its order plan (shifts and parts per shift) sets the replica floors of the slices serving it;
its series and failed parts feed the dashboard's line pages.
"""

from __future__ import annotations

import shlex
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import Session, select

from contracts import wire
from control_plane import capacity, catalogue, dashboard, sites
from control_plane.api.deps import (
    CurrentUser,
    IdPath,
    NowDep,
    PageDep,
    SessionDep,
    SettingsDep,
    allowed,
    get_or_404,
    insert,
    own_tenant,
    scoped_get,
)
from control_plane.errors import NotFound
from control_plane.models import (
    FailedPart,
    FailedPartPublic,
    Line,
    LineCreate,
    LinePublic,
    LineUpdate,
    LineWatcher,
    OrderPlan,
    OrderPlanIn,
    Site,
    Slice,
    Tenant,
    utcnow,
)
from control_plane.money import rate
from control_plane.security import Permission, Principal

router = APIRouter(prefix="/lines", tags=["lines"])


@router.post("", response_model=LinePublic, status_code=201)
def create_line(
    body: LineCreate,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_LINES, "creating lines")],
) -> Line:
    get_or_404(session, Site, body.site_id)
    assert caller.tenant_id is not None
    line = Line(tenant_id=caller.tenant_id, **body.model_dump())
    return insert(session, line, conflict=f"line {body.slug!r} already exists in your tenant")


@router.get("", response_model=list[LinePublic])
def list_lines(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[Line]:
    """Your tenant's lines by id (operators: all), a page at a time (X-Next-Cursor)."""
    return page.of(session, own_tenant(select(Line), Line, caller), Line)


@router.get("/{line_id}", response_model=LinePublic)
def get_line(line_id: IdPath, session: SessionDep, caller: CurrentUser) -> Line:
    return scoped_get(session, Line, line_id, caller)


@router.patch("/{line_id}", response_model=LinePublic)
def update_line(
    line_id: IdPath,
    body: LineUpdate,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_LINES, "changing lines")],
) -> Line:
    line = scoped_get(session, Line, line_id, caller)
    for key, value in body.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(line, key, value)
    session.add(line)
    for item in session.exec(select(Slice).where(Slice.tenant_id == line.tenant_id)).all():
        if line_id in item.line_ids:  # its spec carries the line's policy: a new generation for the agent
            item.generation += 1
            item.updated_at = utcnow()
            session.add(item)
    session.commit()
    session.refresh(line)
    return line


# --- order plans: capacity tied to order volume ------------------------------------------------


def plan_preview(session: Session, line: Line, now: datetime) -> list[dict[str, Any]]:
    """Per live slice serving the line: its planned windows for the next 7 days, with the lease and profile."""
    slices = session.exec(select(Slice).where(Slice.tenant_id == line.tenant_id)).all()
    return [
        {"slice_id": s.id, "slug": s.slug, **capacity.slice_windows(session, s, now, days=7)}
        for s in slices
        if line.id in s.line_ids and s.status in capacity.LIVE_SLICES
    ]


def _stage_plan(session: Session, line: Line, plan: dict[str, Any]) -> OrderPlan:
    """The line's order plan row holding ``plan`` (created if the line has none), added to the session."""
    assert line.id is not None
    row = session.exec(select(OrderPlan).where(OrderPlan.line_id == line.id)).first()
    if row is None:
        row = OrderPlan(tenant_id=line.tenant_id, line_id=line.id, plan=plan)
    else:
        row.plan, row.updated_at = plan, utcnow()
    session.add(row)
    return row


@router.post("/{line_id}/watcher", response_model=LineWatcher)
def line_watcher(
    line_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_ROBOTS, "reading a line's watch credentials")],
) -> LineWatcher:
    """Read-only broker credentials for every robot's results, errors and status on the line, for a bridge to
    plant equipment (``lineside bridge opcua``) or an MES; they publish nothing and see no frames."""
    line = scoped_get(session, Line, line_id, caller)
    site = session.get(Site, line.site_id)
    tenant = session.get(Tenant, line.tenant_id)
    assert site is not None
    assert tenant is not None
    assert line.id is not None
    client = sites.line_watcher_client(session, settings, line)
    with sites.admin(settings, site) as broker:  # the site's sync made it already; a new line's is made here
        broker.ensure(client)  # never replace: that would disconnect the bridge already using it
    topics = {k.value: wire.line_filter(tenant.slug, line.slug, k)
              for k in (wire.TopicKind.RESULTS, wire.TopicKind.ERRORS, wire.TopicKind.STATUS)}  # fmt: skip
    login = f"-h {site.broker_host} -p {site.broker_port}"
    examples = {
        "mosquitto_sub": f"mosquitto_sub {login} -V mqttv5 -u {client.username} -P {shlex.quote(client.password)} "
        f"-i {client.username} -t '{topics['results']}' -t '{topics['errors']}' -v",
        "opcua_bridge": f"LINESIDE_BROKER_PASSWORD={shlex.quote(client.password)} lineside bridge opcua "
        f"--tenant {tenant.slug} --line {line.slug} --broker-host {site.broker_host} "
        f"--broker-port {site.broker_port} --username {client.username} --certificate opcua-certs/opcua-bridge.der "
        "--private-key opcua-certs/opcua-bridge.key.pem",
    }
    return LineWatcher(line_id=line.id, username=client.username, password=client.password,
                       broker_host=site.broker_host, broker_port=site.broker_port, topics=topics,
                       examples=examples)  # fmt: skip


@router.put("/{line_id}/order-plan")
def put_order_plan(
    line_id: IdPath,
    body: OrderPlanIn,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SLICES, "entering order plans")],
    now: NowDep,
) -> dict[str, Any]:
    """Set the line's shifts and order volume; answers the resulting floors and cost for the next 7 days."""
    line = scoped_get(session, Line, line_id, caller)
    stored = body.model_dump(mode="json")
    _stage_plan(session, line, stored)
    session.commit()
    return {"line_id": line_id, "plan": stored, "slices": plan_preview(session, line, now)}


@router.get("/{line_id}/order-plan")
def get_order_plan(line_id: IdPath, session: SessionDep, caller: CurrentUser, now: NowDep) -> dict[str, Any]:
    line = scoped_get(session, Line, line_id, caller)
    row = session.exec(select(OrderPlan).where(OrderPlan.line_id == line_id)).first()
    if row is None:
        raise NotFound(f"line {line.slug} has no order plan yet; PUT one")
    return {"line_id": line_id, "plan": row.plan, "slices": plan_preview(session, line, now)}


@router.post("/{line_id}/order-plan/preview")
def preview_order_plan(
    line_id: IdPath,
    body: OrderPlanIn,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SLICES, "planning capacity")],
    now: NowDep,
) -> dict[str, Any]:
    """What an order plan would do, without saving it: floors and cost for 7 days, and the capacity chart."""
    line = scoped_get(session, Line, line_id, caller)
    _stage_plan(session, line, body.model_dump(mode="json"))
    session.flush()  # the plan is visible to this transaction only, and rolled back below
    try:
        slices = plan_preview(session, line, now)
        for entry in slices:
            item = session.get(Slice, entry["slice_id"])
            assert item is not None
            entry["cost_7_days"] = _cost(entry, *catalogue.hourly_price(session, item))
            entry["capacity"] = dashboard.capacity_series(session, item, now)
    finally:
        session.rollback()
    return {"line_id": line_id, "plan": body.model_dump(mode="json"), "slices": slices}


def _cost(entry: dict[str, Any], price: Decimal, currency: str) -> dict[str, Any]:
    """Replica-hours the planned floors hold over the windows shown, what they cost at the lease's price per
    replica-hour, and what the replicas the lease lacks would cost (money as text, e.g. '12.60 EUR')."""
    hours = short = Decimal(0)
    for windows in entry["lines"].values():
        for w in windows:
            length = Decimal(int((w["end"] - w["warm_from"]).total_seconds())) / 3600
            hours += w["floor"] * length
            short += w["shortfall"] * length
    return {
        "replica_hours": float(round(hours, 1)),
        "cost": str(rate(price, hours, currency)),
        "shortfall_replica_hours": float(round(short, 1)),
        "shortfall_cost": str(rate(price, short, currency)),
    }


# --- what the line saw: the dashboard's line pages ---------------------------------------------


@router.get("/{line_id}/series")
def line_series(line_id: IdPath, session: SessionDep, caller: CurrentUser,
                hours: int = Query(default=24, ge=1, le=24 * 31)) -> list[dict[str, Any]]:  # fmt: skip
    """The line's frames/s, defect rate and latency over the last ``hours`` (at most 288 points)."""
    line = scoped_get(session, Line, line_id, caller)
    return dashboard.line_series(session, line, utcnow(), hours)


@router.get("/{line_id}/failed-parts", response_model=list[FailedPartPublic])
def failed_parts(line_id: IdPath, session: SessionDep, caller: CurrentUser, page: PageDep) -> list[FailedPart]:
    """The line's latest failed parts, newest first (paged, X-Next-Cursor); thumbnails at
    ``/failed-parts/{id}/thumbnail``."""
    scoped_get(session, Line, line_id, caller)
    return page.of(session, select(FailedPart).where(FailedPart.line_id == line_id), FailedPart, newest_first=True)
