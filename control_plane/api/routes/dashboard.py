"""JSON behind the dashboard's pages: line tiles, series, failed parts, capacity over time, sites.

Every route is scoped like the rest of the API (a tenant's users see their own
lines and slices, operators see all), so the pages show nothing a caller could
not read through the API anyway.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from sqlmodel import select

from control_plane import dashboard
from control_plane.api.deps import CurrentUser, IdPath, NowDep, PageDep, SessionDep, own_tenant, scoped_get
from control_plane.api.routes.capacity import plan_preview
from control_plane.models import FailedPart, FailedPartPublic, Line, OrderPlan, OrderPlanIn, Site, Slice, utcnow
from control_plane.security import CAN

router = APIRouter(tags=["dashboard"])


@router.get("/dashboard/lines")
def lines_overview(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[dict[str, Any]]:
    """Each of your lines: robots online, frames/s, latency p50/p99 against its budget, defect rate.

    By line id, a page at a time (X-Next-Cursor)."""
    now = utcnow()
    lines = page.of(session, own_tenant(select(Line), Line, caller), Line)
    return [dashboard.line_summary(session, line, now) for line in lines]


@router.get("/lines/{line_id}/series")
def line_series(line_id: IdPath, session: SessionDep, caller: CurrentUser,
                hours: int = Query(default=24, ge=1, le=24 * 31)) -> list[dict[str, Any]]:  # fmt: skip
    """The line's frames/s, defect rate and latency over the last ``hours`` (at most 288 points)."""
    line = scoped_get(session, Line, line_id, caller)
    return dashboard.line_series(session, line, utcnow(), hours)


@router.get("/lines/{line_id}/failed-parts", response_model=list[FailedPartPublic])
def failed_parts(line_id: IdPath, session: SessionDep, caller: CurrentUser, page: PageDep) -> list[FailedPart]:
    """The line's latest failed parts, newest first (paged, X-Next-Cursor); thumbnails at
    ``/failed-parts/{id}/thumbnail``."""
    scoped_get(session, Line, line_id, caller)
    return page.of(session, select(FailedPart).where(FailedPart.line_id == line_id), FailedPart, newest_first=True)


@router.get("/failed-parts/{part_id}/thumbnail", response_class=Response)
def thumbnail(part_id: IdPath, session: SessionDep, caller: CurrentUser) -> Response:
    """A failed part's thumbnail (JPEG)."""
    part = scoped_get(session, FailedPart, part_id, caller)
    return Response(part.thumbnail, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/slices/{slice_id}/capacity")
def capacity_chart(slice_id: IdPath, session: SessionDep, caller: CurrentUser, now: NowDep,
                   hours_back: int = Query(default=24, ge=1, le=24 * 7),
                   hours_ahead: int = Query(default=24, ge=1, le=24 * 7)) -> dict[str, Any]:  # fmt: skip
    """Planned demand, replica floor, running replicas and lease limit over time, with a text summary."""
    caller.require(*CAN["read_slices"], action="reading capacity")
    item = scoped_get(session, Slice, slice_id, caller)
    return dashboard.capacity_series(session, item, now, hours_back, hours_ahead)


@router.post("/lines/{line_id}/order-plan/preview")
def preview_order_plan(line_id: IdPath, body: OrderPlanIn, session: SessionDep, caller: CurrentUser,
                       now: NowDep) -> dict[str, Any]:  # fmt: skip
    """What an order plan would do, without saving it: floors and cost for 7 days, and the capacity chart."""
    caller.require(*CAN["manage_slices"], action="planning capacity")
    line = scoped_get(session, Line, line_id, caller)
    row = session.exec(select(OrderPlan).where(OrderPlan.line_id == line_id)).first()
    row = row or OrderPlan(tenant_id=line.tenant_id, line_id=line_id, plan={})
    row.plan = body.model_dump(mode="json")
    session.add(row)
    session.flush()  # the plan is visible to this transaction only, and rolled back below
    try:
        slices = plan_preview(session, line, now)
        for entry in slices:
            item = session.get(Slice, entry["slice_id"])
            assert item is not None
            entry["cost_7_days"] = _cost(entry, item.price_per_replica_hour)
            entry["capacity"] = dashboard.capacity_series(session, item, now)
    finally:
        session.rollback()
    return {"line_id": line_id, "plan": body.model_dump(mode="json"), "slices": slices}


def _cost(entry: dict[str, Any], price: float) -> dict[str, float]:
    """Replica-hours the planned floors hold over the windows shown, what they cost, what the lease lacks."""
    hours = shortfall = 0.0
    for windows in entry["lines"].values():
        for w in windows:
            length = (w["end"] - w["warm_from"]).total_seconds() / 3600
            hours += w["floor"] * length
            shortfall += w["shortfall_cost_per_hour"] * length
    return {"replica_hours": round(hours, 1), "cost": round(hours * price, 2), "shortfall_cost": round(shortfall, 2)}


@router.get("/dashboard/sites")
def sites_overview(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[dict[str, Any]]:
    """Operators: every site with its nodes' status, utilization and the slices placed on them.

    By site id, a page at a time (X-Next-Cursor)."""
    caller.require(*CAN["manage_nodes"], action="viewing sites and nodes")
    return dashboard.operator_overview(session, utcnow(), page.of(session, select(Site), Site))
