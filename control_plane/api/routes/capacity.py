"""Capacity tied to order volume: order plans per line, planned floors per slice, scale events."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Query
from sqlmodel import select

from control_plane import capacity
from control_plane.api.deps import CurrentUser, IdPath, NowDep, PageDep, SessionDep, scoped_get
from control_plane.api.routes.models import visible_model
from control_plane.errors import NotFound
from control_plane.models import (
    Line,
    ModelProfile,
    ModelProfilePublic,
    OrderPlan,
    OrderPlanIn,
    ScaleEvent,
    ScaleEventPublic,
    Slice,
    utcnow,
)
from control_plane.security import CAN

router = APIRouter(tags=["capacity"])


def plan_preview(session: SessionDep, line: Line, now: datetime) -> list[dict[str, Any]]:
    slices = session.exec(select(Slice).where(Slice.tenant_id == line.tenant_id)).all()
    return [
        {"slice_id": s.id, "slug": s.slug, **capacity.slice_windows(session, s, now, days=7)}
        for s in slices
        if line.id in s.line_ids and s.status in capacity.LIVE_SLICES
    ]


@router.put("/lines/{line_id}/order-plan")
def put_order_plan(line_id: IdPath, body: OrderPlanIn, session: SessionDep, caller: CurrentUser,
                   now: NowDep) -> dict[str, Any]:  # fmt: skip
    """Set the line's shifts and order volume; answers the resulting floors and cost for the next 7 days."""
    caller.require(*CAN["manage_slices"], action="entering order plans")
    line = scoped_get(session, Line, line_id, caller)
    stored = body.model_dump(mode="json")
    row = session.exec(select(OrderPlan).where(OrderPlan.line_id == line_id)).first()
    if row is None:
        row = OrderPlan(tenant_id=line.tenant_id, line_id=line_id, plan=stored)
    else:
        row.plan, row.updated_at = stored, utcnow()
    session.add(row)
    session.commit()
    return {"line_id": line_id, "plan": stored, "slices": plan_preview(session, line, now)}


@router.get("/lines/{line_id}/order-plan")
def get_order_plan(line_id: IdPath, session: SessionDep, caller: CurrentUser, now: NowDep) -> dict[str, Any]:
    line = scoped_get(session, Line, line_id, caller)
    row = session.exec(select(OrderPlan).where(OrderPlan.line_id == line_id)).first()
    if row is None:
        raise NotFound(f"line {line.slug} has no order plan yet; PUT one")
    return {"line_id": line_id, "plan": row.plan, "slices": plan_preview(session, line, now)}


@router.get("/slices/{slice_id}/plan")
def get_slice_plan(slice_id: IdPath, session: SessionDep, caller: CurrentUser, now: NowDep,
                   days: int = Query(default=7, ge=1, le=31)) -> dict[str, Any]:  # fmt: skip
    """Planned floors per shift window for the slice's lines, with the lease cap and what more would cost."""
    caller.require(*CAN["read_slices"], action="reading capacity plans")
    item = scoped_get(session, Slice, slice_id, caller)
    planned = capacity.planned_floor(session, item, now)
    return {
        "slice_id": slice_id,
        "now": now.isoformat(),
        "floor_now": planned[0] if planned else None,
        "why": planned[1] if planned else "no order plan or no measured profile yet",
        **capacity.slice_windows(session, item, now - timedelta(hours=1), days),
    }


@router.get("/slices/{slice_id}/events", response_model=list[ScaleEventPublic])
def list_scale_events(slice_id: IdPath, session: SessionDep, caller: CurrentUser, page: PageDep) -> list[ScaleEvent]:
    """Every change of the slice's bounds with its reason, newest first; paged (X-Next-Cursor)."""
    caller.require(*CAN["read_slices"], action="reading scale events")
    scoped_get(session, Slice, slice_id, caller)
    query = select(ScaleEvent).where(ScaleEvent.slice_id == slice_id)
    return page.of(session, query, ScaleEvent, newest_first=True)


@router.get("/models/{model_id}/profiles", response_model=list[ModelProfilePublic])
def list_profiles(model_id: IdPath, session: SessionDep, caller: CurrentUser, page: PageDep) -> list[ModelProfile]:
    """Measured frames/s per replica and cold-start time of a model version, per hardware; paged (X-Next-Cursor)."""
    model = visible_model(session, model_id, caller)
    return page.of(session, select(ModelProfile).where(ModelProfile.model_sha256 == model.sha256), ModelProfile)
