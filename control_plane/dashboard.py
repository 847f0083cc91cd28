"""What the dashboard shows, computed from the database: line health, series, capacity over time.

No FastAPI here: ``api/routes/dashboard.py`` scopes the caller and calls these.
Times stored by the control plane are UTC; plans run on the plant's local
clock (``app.state.clock``), so capacity series convert plan times with
``astimezone()`` before they meet event times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from contracts import wire
from control_plane import capacity, planner
from control_plane.models import Line, LineMinute, Node, Robot, ScaleEvent, Site, Slice, as_utc
from control_plane.states import RobotStatus

ONLINE_WITHIN = timedelta(seconds=30)
"""A robot that says nothing of its connection counts as online if a frame of it was answered this recently."""
LIVE_WINDOW = timedelta(minutes=5)
"""Latency and defect rate on the line tiles cover this much recent time."""


def robot_online(robot: Robot, now: datetime) -> bool:
    if robot.connected is not None:
        return robot.connected
    return robot.last_frame_at is not None and now - as_utc(robot.last_frame_at) <= ONLINE_WITHIN


def _merge(rows: Sequence[LineMinute]) -> tuple[int, int, int, list[int]]:
    histogram = [0] * (len(wire.LATENCY_BUCKETS_MS) + 1)
    frames = fails = errors = 0
    for row in rows:
        frames, fails, errors = frames + row.frames, fails + row.fails, errors + row.errors
        for index, count in enumerate(row.latency_histogram[: len(histogram)]):
            histogram[index] += count
    return frames, fails, errors, histogram


def _quantile(histogram: list[int], q: float) -> float | None:
    value = wire.histogram_quantile(histogram, q)
    return None if value is None or math.isinf(value) else value


def line_summary(session: Session, line: Line, now: datetime) -> dict[str, Any]:
    """One line's tile: robots online, frames/s (last minute), latency and defect rate (last 5 minutes)."""
    robots = session.exec(select(Robot).where(Robot.line_id == line.id, Robot.status == RobotStatus.ACTIVE)).all()
    current = now.replace(second=0, microsecond=0)
    recent = session.exec(
        select(LineMinute).where(LineMinute.line_id == line.id, LineMinute.minute >= current - LIVE_WINDOW)
    ).all()
    last_minute = [r for r in recent if as_utc(r.minute) >= current - timedelta(minutes=1)]
    # frames/s over the last minute, or over less where telemetry began more recently (a slice just started)
    earliest = min((as_utc(r.covered_from or r.minute) for r in last_minute), default=current)
    covered = max(1.0, (now - max(current - timedelta(minutes=1), earliest)).total_seconds())
    frames, fails, errors, histogram = _merge(recent)
    p99 = wire.histogram_quantile(histogram, 0.99)
    beyond = p99 is not None and math.isinf(p99)  # slower than the last bucket: show "> 5000 ms", over budget
    return {
        "id": line.id, "slug": line.slug, "name": line.name or line.slug, "latency_budget_ms": line.latency_budget_ms,
        "robots": len(robots), "robots_online": sum(robot_online(r, now) for r in robots),
        "frames_per_s": round(sum(r.frames for r in last_minute) / covered, 2),
        "p50_ms": _quantile(histogram, 0.5), "p99_ms": float(wire.LATENCY_BUCKETS_MS[-1]) if beyond else p99,
        "p99_beyond_ms": beyond, "within_budget": None if p99 is None else p99 <= line.latency_budget_ms,
        "frames_5min": frames, "defect_rate": round(fails / frames, 4) if frames else None, "errors_5min": errors,
    }  # fmt: skip


def line_series(session: Session, line: Line, now: datetime, hours: int, points: int = 288) -> list[dict[str, Any]]:
    """Frames/s, defect rate and latency over the last ``hours``, in at most ``points`` buckets."""
    since = now.replace(second=0, microsecond=0) - timedelta(hours=hours)
    rows = session.exec(
        select(LineMinute)
        .where(LineMinute.line_id == line.id, LineMinute.minute >= since)
        .order_by(col(LineMinute.minute))
    ).all()
    step = max(1, math.ceil(hours * 60 / points))
    buckets: dict[int, list[LineMinute]] = {}
    for row in rows:
        buckets.setdefault(int((as_utc(row.minute) - since).total_seconds() // 60) // step, []).append(row)
    series = []
    for index, group in sorted(buckets.items()):
        frames, fails, errors, histogram = _merge(group)
        series.append({
            "t": (since + timedelta(minutes=index * step)).isoformat(), "frames_per_s": round(frames / (step * 60), 3),
            "defect_rate": round(fails / frames, 4) if frames else None, "errors": errors,
            "p50_ms": _quantile(histogram, 0.5), "p99_ms": _quantile(histogram, 0.99),
        })  # fmt: skip
    return series


def _steps(events: Sequence[ScaleEvent], value: str, current: int | None) -> list[tuple[datetime, int]]:
    """(time, value after) of the events that set ``value``; the first entry holds what was before them."""
    changes = [(as_utc(e.at), getattr(e, f"{value}_before"), getattr(e, f"{value}_after")) for e in events]
    changes = [c for c in changes if c[2] is not None]
    if not changes:
        return [(datetime.min.replace(tzinfo=UTC), current)] if current is not None else []
    return [(datetime.min.replace(tzinfo=UTC), changes[0][1]), *((at, after) for at, _, after in changes)]


def _at(steps: list[tuple[datetime, int]], t: datetime) -> int | None:
    found = None
    for at, value in steps:
        if at > t:
            break
        found = value
    return found


def running_models(replicas: dict[str, Any]) -> int:
    """Running model replicas over a slice's model deployments (one per node when pinned), as agents report them."""
    return sum(int(states.get("RUNNING", 0)) for name, states in replicas.items() if name.startswith("model"))


def running_replicas(item: Slice) -> int:
    return running_models(item.actual.get("replicas", {}))


def capacity_series(session: Session, item: Slice, now_local: datetime, hours_back: int = 24,
                    hours_ahead: int = 24, step_minutes: int = 15) -> dict[str, Any]:  # fmt: skip
    """Planned demand, replica floor, running replicas and lease limit over time, with a text summary."""
    events = session.exec(select(ScaleEvent).where(ScaleEvent.slice_id == item.id).order_by(col(ScaleEvent.at))).all()
    floors = _steps(events, "min", item.min_replicas)
    leases = _steps(events, "max", item.max_replicas)
    running = _steps(events, "running", running_replicas(item))
    plans, profile = capacity.line_plans(session, item), capacity.profile_for(session, item)
    start = now_local.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours_back)
    windows = {
        line_id: planner.windows(plan, profile, capacity.UNLIMITED, start, days=(hours_back + hours_ahead) // 24 + 2)
        for line_id, plan in plans.items()
    } if profile else {}  # fmt: skip
    now = now_local.astimezone(UTC)
    points = []
    for index in range((hours_back + hours_ahead) * 60 // step_minutes + 1):
        t_local = start + timedelta(minutes=index * step_minutes)
        t = t_local.astimezone(UTC)
        demand = sum(planner.floor_at(w, t_local, plans[i].idle_floor)[0] for i, w in windows.items())
        past = t <= now
        points.append({
            "t": t.isoformat(), "demand": demand if windows else None,
            "floor": _at(floors, t) if past else min(demand, item.max_replicas) if windows else item.min_replicas,
            "lease": _at(leases, t) if past else item.max_replicas,
            "actual": _at(running, t) if past else None,
        })  # fmt: skip
    return {"slice_id": item.id, "slug": item.slug, "now": now.isoformat(), "points": points,
            "summary": _summary(item, points, bool(windows))}  # fmt: skip


def _summary(item: Slice, points: list[dict[str, Any]], planned: bool) -> str:
    """The chart in words, for screen readers and for anyone who wants the numbers."""
    future = [p for p in points if p["actual"] is None]
    ahead = max((p["demand"] or 0 for p in future), default=0)
    text = (f"Slice {item.slug}: {running_replicas(item)} replicas running now, floor {item.min_replicas}, "
            f"lease limit {item.max_replicas}.")  # fmt: skip
    if not planned:
        return text + " No order plan with a measured model profile yet, so no planned demand."
    short = f" That is {ahead - item.max_replicas} more than the lease allows." if ahead > item.max_replicas else ""
    return text + f" Planned demand peaks at {ahead} replicas in the next {len(future) // 4} hours.{short}"


def operator_overview(session: Session, now: datetime, sites: list[Site] | None = None) -> list[dict[str, Any]]:
    """Every site (or those of ``sites``, a page of them) with its nodes (status, utilization, slices placed)."""
    slices = session.exec(select(Slice)).all()
    placed: dict[str, list[dict[str, Any]]] = {}
    for item in slices:
        for node_id, count in item.placement.items():
            placed.setdefault(str(node_id), []).append({"slice": item.app_name, "replicas": count,
                                                        "priority": item.priority.value})  # fmt: skip
    result = []
    for site in sites if sites is not None else session.exec(select(Site).order_by(col(Site.id))).all():
        nodes = session.exec(select(Node).where(Node.site_id == site.id).order_by(col(Node.id))).all()
        result.append({
            "id": site.id, "name": site.name, "broker": f"{site.broker_host}:{site.broker_port}",
            "nodes": [{
                "id": n.id, "hostname": n.hostname, "status": n.status.value, "cpus": n.cpus,
                "memory_mb": n.memory_mb, "gpus": n.gpus, "utilization": n.utilization,
                "contributed": n.contributed, "windows": n.windows, "holidays": n.holidays,
                "notice_s": n.notice_s, "held_until": None if n.held_until is None else n.held_until.isoformat(),
                "bank_until": None if n.bank_until is None else n.bank_until.isoformat(),
                "last_heartbeat_s": None if n.last_heartbeat_at is None
                else round((now - as_utc(n.last_heartbeat_at)).total_seconds(), 1),
                "placement": placed.get(str(n.id), []),
            } for n in nodes],
        })  # fmt: skip
    return result
