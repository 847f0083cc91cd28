"""Capacity tied to order volume: from a line's order plan to replica floors over time. Pure.

    required frames/s  = parts per shift x views per part / shift length
    replica floor      = ceil(required frames/s x (1 + headroom) / measured frames/s per replica)

Each shift's floor applies from ``cold_start_s`` before the shift starts, so
replicas are warm when the first part arrives; outside shifts the floor is
``idle_floor``. A floor never exceeds the lease: when the demand does, the
window says by how many replicas and what they would cost per hour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from control_plane.money import rate


@dataclass(frozen=True)
class Shift:
    """A shift on ``days`` (0 = Monday) from ``start`` to ``end``; ``end <= start`` runs past midnight."""

    name: str
    days: frozenset[int]
    start: time
    end: time

    @property
    def length(self) -> timedelta:
        start = datetime.combine(date.min, self.start)
        end = datetime.combine(date.min, self.end)
        return (end - start) if end > start else (end + timedelta(days=1) - start)


@dataclass(frozen=True)
class Volume:
    """From ``effective_from`` on, each shift makes ``parts_per_shift`` parts."""

    effective_from: date
    parts_per_shift: int


@dataclass(frozen=True)
class OrderPlan:
    shifts: tuple[Shift, ...]
    volumes: tuple[Volume, ...]  # the latest entry not after a shift's date applies
    views_per_part: int
    headroom: float = 0.25
    idle_floor: int = 0


@dataclass(frozen=True)
class Profile:
    """Measured on the slice's hardware for its model version."""

    frames_per_s_per_replica: float
    cold_start_s: float


@dataclass(frozen=True)
class Lease:
    max_replicas: int
    price_per_replica_hour: Decimal  # the leased product's rate for the slice's priority (0: not per hour)
    currency: str = "EUR"


@dataclass(frozen=True)
class PlanWindow:
    shift: str
    warm_from: datetime  # the floor applies from here (shift start - cold start)
    start: datetime
    end: datetime
    parts: int
    required_fps: float
    wanted_replicas: int
    floor: int  # wanted_replicas capped by the lease
    shortfall: int  # replicas the lease lacks
    shortfall_cost_per_hour: str  # money as text, e.g. '1.80 EUR'


def parts_for(plan: OrderPlan, day: date) -> int:
    current = [v for v in plan.volumes if v.effective_from <= day]
    return max(current, key=lambda v: v.effective_from).parts_per_shift if current else 0


def windows(plan: OrderPlan, profile: Profile, lease: Lease, start: datetime, days: int) -> list[PlanWindow]:
    """Every shift starting in ``[start - 1 day, start + days)``, in time order."""
    result = []
    first = start.date() - timedelta(days=1)
    for offset in range(days + 1):
        day = first + timedelta(days=offset)
        for shift in plan.shifts:
            if day.weekday() not in shift.days:
                continue
            begins = datetime.combine(day, shift.start)
            ends = begins + shift.length
            parts = parts_for(plan, day)
            fps = parts * plan.views_per_part / shift.length.total_seconds()
            wanted = math.ceil(fps * (1 + plan.headroom) / profile.frames_per_s_per_replica - 1e-9) if parts else 0
            wanted = max(wanted, plan.idle_floor)
            floor = min(wanted, lease.max_replicas)
            short = wanted - floor
            result.append(PlanWindow(
                shift.name, begins - timedelta(seconds=profile.cold_start_s), begins, ends, parts, round(fps, 3),
                wanted, floor, short, str(rate(lease.price_per_replica_hour, Decimal(short), lease.currency)),
            ))  # fmt: skip
    return sorted(result, key=lambda w: (w.warm_from, w.shift))


def floor_at(plan_windows: Sequence[PlanWindow], at: datetime, idle_floor: int = 0) -> tuple[int, PlanWindow | None]:
    """The replica floor in force at ``at`` and the window that sets it (None: between shifts)."""
    active = [w for w in plan_windows if w.warm_from <= at < w.end]
    if not active:
        return idle_floor, None
    window = max(active, key=lambda w: w.floor)  # overlapping warm-up and shift: the larger floor
    return window.floor, window
