"""Capacity tied to order volume, with the database: plans per line, profiles per model, floors per slice.

``apply_plans(session, now)`` is what runs on the control plane's clock: for
each live slice whose lines have order plans and whose model has a measured
profile, it sets the replica floor the planner asks for at ``now`` (never above
the lease) and records a scale event saying why. The agent then applies the
new generation.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from sqlmodel import Session, col, select

from control_plane import catalogue, planner
from control_plane.models import (
    Line,
    ModelProfile,
    ModelVersion,
    OrderPlan,
    ScaleEvent,
    ScaleKind,
    Slice,
    utcnow,
)
from control_plane.sites import LIVE_SLICES
from control_plane.states import SliceStatus, transition

log = logging.getLogger(__name__)
UNLIMITED = planner.Lease(max_replicas=10**6, price_per_replica_hour=Decimal(0))
PLANNING_FAILURES = [0]
"""Slices whose planning pass raised, since the process started (a counter the app exports)."""


def to_plan(stored: dict[str, Any]) -> planner.OrderPlan:
    shifts = tuple(
        planner.Shift(s["name"], frozenset(s["days"]), time.fromisoformat(s["start"]), time.fromisoformat(s["end"]))
        for s in stored["shifts"]
    )
    volumes = tuple(
        planner.Volume(date.fromisoformat(v["effective_from"]), v["parts_per_shift"]) for v in stored["volumes"]
    )
    return planner.OrderPlan(shifts, volumes, stored["views_per_part"], stored["headroom"], stored["idle_floor"])


def profile_for(session: Session, item: Slice) -> planner.Profile | None:
    """The newest profile of the slice's model measured at the slice's site (any of its hardware classes;
    per-hardware matching comes later). Another site's nodes never speak for this one."""
    model = session.get(ModelVersion, item.model_version_id)
    assert model is not None
    row = session.exec(
        select(ModelProfile)
        .where(ModelProfile.model_sha256 == model.sha256, ModelProfile.site_id == item.site_id)
        .order_by(col(ModelProfile.measured_at).desc())
    ).first()
    return planner.Profile(row.frames_per_s_per_replica, row.cold_start_s) if row else None


def line_plans(session: Session, item: Slice) -> dict[int, planner.OrderPlan]:
    rows = session.exec(select(OrderPlan).where(col(OrderPlan.line_id).in_(item.line_ids))).all()
    return {row.line_id: to_plan(row.plan) for row in rows}


def slice_windows(session: Session, item: Slice, start: datetime, days: int) -> dict[str, Any]:
    """Per line, the plan's windows for this slice's model, with the lease's cap and cost."""
    profile = profile_for(session, item)
    lease = planner.Lease(item.max_replicas, *catalogue.hourly_price(session, item))
    plans = line_plans(session, item)
    lines = {line.id: line.slug for line in session.exec(select(Line).where(col(Line.id).in_(plans))).all()}
    return {
        "profile": asdict(profile) if profile else None,
        "lease": asdict(lease),
        "lines": {
            lines[line_id]: [asdict(w) for w in planner.windows(plan, profile, lease, start, days)] if profile else []
            for line_id, plan in plans.items()
        },
    }


def planned_floor(session: Session, item: Slice, now: datetime) -> tuple[int, str] | None:
    """The floor the plans ask for at ``now`` and why; None when there is no plan or no profile."""
    plans = line_plans(session, item)
    profile = profile_for(session, item)
    if not plans or profile is None:
        return None
    wanted, reasons = 0, []
    for line_id, plan in sorted(plans.items()):
        windows = planner.windows(plan, profile, UNLIMITED, now, days=1)
        floor, window = planner.floor_at(windows, now, plan.idle_floor)
        wanted += floor
        if window is not None:
            reasons.append(f"line {line_id} shift {window.shift} {window.start:%a %H:%M}: {window.parts} parts x "
                           f"{plan.views_per_part} views = {window.required_fps:g} frames/s -> {floor}")  # fmt: skip
    floor = min(wanted, item.max_replicas)
    why = "; ".join(reasons) or "between shifts"
    if wanted > item.max_replicas:
        why += f" (wants {wanted}, lease allows {item.max_replicas}: {wanted - item.max_replicas} short)"
    return floor, why


def record(session: Session, item: Slice, kind: ScaleKind, new_min: int, new_max: int, reason: str) -> ScaleEvent:
    """Move the slice's bounds (a new generation for the agent) and record why."""
    assert item.id is not None
    event = ScaleEvent(tenant_id=item.tenant_id, slice_id=item.id, kind=kind, min_before=item.min_replicas,
                       min_after=new_min, max_before=item.max_replicas, max_after=new_max, reason=reason)  # fmt: skip
    item.status = transition(item.status, SliceStatus.PENDING, what=f"slice {item.slug}")
    item.min_replicas, item.max_replicas = new_min, new_max
    item.generation += 1
    item.updated_at = utcnow()
    session.add(event)
    return event


def apply_plans(session: Session, now: datetime) -> list[ScaleEvent]:
    """Set every planned slice's floor for ``now``; returns the scale events this made."""
    events = []
    ids = session.exec(select(Slice.id).where(col(Slice.status).in_(LIVE_SLICES)).order_by(col(Slice.id))).all()
    for slice_id in ids:
        try:  # one slice's bad plan or profile must not keep the others at stale floors
            item = session.get(Slice, slice_id)
            assert item is not None
            planned = planned_floor(session, item, now)
            if planned is None or planned[0] == item.min_replicas:
                continue
            floor, why = planned
            events.append(record(session, item, ScaleKind.PLANNED, floor, item.max_replicas, why))
            session.commit()
            log.info("slice %s: planned floor %d (%s)", item.slug, floor, why)
        except Exception:
            session.rollback()
            PLANNING_FAILURES[0] += 1
            log.exception("planning slice %s failed; the other slices are planned as usual", slice_id)
    return events
