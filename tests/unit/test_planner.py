"""Order volume -> replica floors: two shifts, a mid-week volume change, pre-warming, the lease cap."""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal

from control_plane.planner import Lease, OrderPlan, Profile, Shift, Volume, floor_at, windows

WEEKDAYS = frozenset(range(5))
PLAN = OrderPlan(
    shifts=(
        Shift("early", WEEKDAYS, time(6, 0), time(14, 0)),
        Shift("late", WEEKDAYS, time(14, 0), time(22, 0)),
    ),
    # 8-hour shifts: 28,800 s. Monday-Tuesday 14,400 parts x 4 views = 2 frames/s; from Wednesday 57,600 = 8 frames/s.
    volumes=(Volume(date(2026, 11, 30), 14_400), Volume(date(2026, 12, 2), 57_600)),
    views_per_part=4,
    headroom=0.25,
)
PROFILE = Profile(frames_per_s_per_replica=3.0, cold_start_s=120.0)
LEASE = Lease(max_replicas=3, price_per_replica_hour=Decimal("1.2"), currency="EUR")


def test_two_shifts_with_a_volume_change_mid_week() -> None:
    plan = windows(PLAN, PROFILE, LEASE, datetime(2026, 11, 30), days=7)
    assert [w.start.weekday() for w in plan] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    monday = plan[0]
    assert (monday.required_fps, monday.wanted_replicas, monday.floor) == (2.0, 1, 1)  # 2 x 1.25 / 3 -> 1
    wednesday = plan[4]
    assert (wednesday.required_fps, wednesday.wanted_replicas, wednesday.floor) == (8.0, 4, 3)  # 10 / 3 -> 4
    assert (wednesday.shortfall, wednesday.shortfall_cost_per_hour) == (1, "1.20 EUR")  # over the lease: by how much


def test_floor_in_force_follows_the_clock_with_prewarm() -> None:
    plan = windows(PLAN, PROFILE, LEASE, datetime(2026, 11, 30), days=7)
    assert floor_at(plan, datetime(2026, 11, 30, 5, 57)) == (0, None)  # before warm-up
    floor, window = floor_at(plan, datetime(2026, 11, 30, 5, 58))  # cold start is 2 min: warm from 05:58
    assert floor == 1 and window is not None and window.shift == "early"
    assert floor_at(plan, datetime(2026, 12, 2, 13, 59))[0] == 3  # Wednesday: the new volume, capped
    assert floor_at(plan, datetime(2026, 12, 2, 22, 0)) == (0, None)  # after the late shift
    assert floor_at(plan, datetime(2026, 12, 5, 10, 0)) == (0, None)  # Saturday: no shift


def test_no_volume_means_no_floor_and_idle_floor_holds() -> None:
    plan = OrderPlan(PLAN.shifts, (), views_per_part=4, idle_floor=1)
    assert all(w.floor == 1 for w in windows(plan, PROFILE, LEASE, datetime(2026, 11, 30), days=2))
    assert floor_at([], datetime(2026, 11, 30), idle_floor=1) == (1, None)
