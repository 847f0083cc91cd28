"""Capacity tied to order volume, end to end on a clock the test controls: an order plan with two
shifts and a mid-week volume change sets replica floors, and Ray Serve runs those replicas."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from control_plane import capacity
from edge_node import cluster
from edge_node.agent import Agent, join
from edge_node.profiling import ProfileResult, profile
from models import BUNDLED_MANIFEST
from tests.integration.cp_fixtures import ControlPlane, coming_monday, ok

START = coming_monday(5)
"""The control plane's clock at the start: a Monday before the early shift."""
PLAN = {
    "views_per_part": 4,
    "headroom": 0.25,
    "idle_floor": 1,
    "shifts": [
        {"name": "early", "days": [0, 1, 2, 3, 4], "start": "06:00", "end": "14:00"},
        {"name": "late", "days": [0, 1, 2, 3, 4], "start": "14:00", "end": "22:00"},
    ],
    # 8 h shifts: 14,400 parts x 4 views = 2 frames/s (1 replica at 3 frames/s); from Wednesday 8 frames/s (4).
    "volumes": [
        {"effective_from": START.date().isoformat(), "parts_per_shift": 14400},
        {"effective_from": (START + timedelta(days=2)).date().isoformat(), "parts_per_shift": 57600},
    ],
}


def fixed_profile(_manifest: Path, *, threads: int, batch: int) -> ProfileResult:
    """The profiling seam: fixed figures so the expected floors do not depend on this machine's speed."""
    return ProfileResult(frames_per_s_per_replica=3.0, cold_start_s=90.0)


def test_profiling_measures_a_replica() -> None:
    result = profile(BUNDLED_MANIFEST, threads=1, batch=8, seconds=0.5, frames=16)
    assert result.frames_per_s_per_replica > 0 and result.cold_start_s > 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_order_plan_sets_floors_that_serve_runs(ray_cluster: int, control_plane: ControlPlane, tmp_path: Path) -> None:
    cp = control_plane
    for tenancy in (cp.a, cp.b):
        ok(cp.client.delete(f"/slices/{tenancy.ids['slice']}", headers=tenancy.pm))
    body = {"slug": "planned", "line_ids": [cp.a.line_id], "model_version_id": 1, "min_replicas": 1,
            "max_replicas": 2, "cpus_per_replica": 0.5}  # fmt: skip
    slice_id = ok(cp.client.post("/slices", json=body, headers=cp.a.pm), 201)["id"]
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    node = join(cp.client, token, tmp_path / "agent")
    agent = Agent(cp.client, node["node_token"], tmp_path / "agent", profiler=fixed_profile)
    app_name = f"t{cp.a.tenant_id}-planned"
    start = START
    clock = {"now": start}
    cp.client.app.state.clock = lambda: clock["now"]  # type: ignore[attr-defined]
    engine = cp.client.app.state.engine  # type: ignore[attr-defined]

    def at(moment: datetime) -> int:
        """Move the clock, let the planner and the agent act; the slice's floor afterwards."""
        clock["now"] = moment
        with Session(engine) as session:
            capacity.apply_plans(session, moment)
        agent.step()
        return int(ok(cp.client.get(f"/slices/{slice_id}", headers=cp.a.pm))["min_replicas"])

    try:
        agent.step()  # starts the slice and reports the (fixed) profile
        model = ok(cp.client.get("/models/1/profiles", headers=cp.a.pm))
        assert [(p["frames_per_s_per_replica"], p["cold_start_s"]) for p in model] == [(3.0, 90.0)]
        preview = ok(cp.client.put(f"/lines/{cp.a.line_id}/order-plan", json=PLAN, headers=cp.a.pm))
        windows = preview["slices"][0]["lines"]["line-1"]
        monday, wednesday = windows[0], windows[4]
        assert (monday["required_fps"], monday["floor"]) == (2.0, 1)
        assert (wednesday["wanted_replicas"], wednesday["floor"], wednesday["shortfall"]) == (4, 2, 2)
        assert wednesday["shortfall_cost_per_hour"] == "1.80 EUR"  # 2 replicas x 0.9 per replica-hour

        assert at(start) == 1  # Monday before the shift: the idle floor
        assert (
            at(start + timedelta(days=2, minutes=58, seconds=45)) == 2
        )  # Wednesday, 75 s before 06:00: pre-warmed, capped
        status = cluster.app_status(app_name)
        assert status["deployments"]["model"]["replicas"] == {"RUNNING": 2}
        assert at(start + timedelta(days=2, hours=18)) == 1  # after the late shift
        events = ok(cp.client.get(f"/slices/{slice_id}/events", headers=cp.a.pm))
        planned = [e for e in events if e["kind"] == "planned"]
        assert [(e["min_before"], e["min_after"]) for e in planned] == [(2, 1), (1, 2)]  # newest first
        assert "lease allows 2: 2 short" in planned[1]["reason"] and "shift early" in planned[1]["reason"]
        assert ok(cp.client.get(f"/slices/{slice_id}/plan", headers=cp.a.it))["floor_now"] == 1
        assert cp.client.put(f"/lines/{cp.a.line_id}/order-plan", json=PLAN, headers=cp.a.it).status_code == 403
        assert cp.client.get(f"/slices/{slice_id}/plan", headers=cp.b.pm).status_code == 404
    finally:
        if app_name in cluster.applications():
            cluster.delete_slice(app_name)
