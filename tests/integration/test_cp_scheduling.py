"""The scheduler behind the API: placement on joined nodes, the compute bank's windows, draining."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session

from control_plane import placement, sites
from tests.integration.cp_fixtures import ControlPlane, bearer, coming_monday, ok

MONDAY_NOON, MONDAY_NIGHT = coming_monday(12), coming_monday(21)


def _node(cp: ControlPlane, hostname: str) -> tuple[int, dict[str, str]]:
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    body = {"token": token, "hostname": hostname, "cpus": 4, "memory_mb": 16000}
    node = ok(cp.client.post("/agent/v1/join", json=body), 201)
    return node["id"], bearer(node["node_token"])


def _slice(cp: ControlPlane, slice_id: int, who: str = "a") -> dict[str, object]:
    return ok(cp.client.get(f"/slices/{slice_id}", headers=getattr(cp, who).pm))


def test_bank_windows_and_draining_move_replicas(control_plane: ControlPlane) -> None:
    cp = control_plane
    clock = {"now": MONDAY_NOON}
    cp.client.app.state.clock = lambda: clock["now"]  # type: ignore[attr-defined]
    own, own_agent = _node(cp, "own-1")
    lab, lab_agent = _node(cp, "lab-1")
    for agent in (own_agent, lab_agent):
        ok(cp.client.post("/agent/v1/heartbeat", json={}, headers=agent))
    placed = _slice(cp, cp.a.ids["slice"])["placement"]
    assert sum(placed.values()) == 1  # type: ignore[attr-defined]

    # The lab lends its server on weekday nights: only bank slices may use it, only then.
    window = {"contributed": True, "windows": [{"days": [0, 1, 2, 3, 4], "start": "20:00", "end": "07:00"}]}
    ok(cp.client.put(f"/nodes/{lab}/contribution", json=window, headers=cp.op))
    body = {"slug": "night-batch", "line_ids": [cp.a.line_id], "model_version_id": 1, "max_replicas": 2,
            "priority": "bank"}  # fmt: skip
    bank = ok(cp.client.post("/slices", json=body, headers=cp.a.pm), 201)
    assert bank["placement"] == {}  # noon: the window is closed
    assert _slice(cp, cp.a.ids["slice"])["placement"] == {str(own): 1}  # reserved stays on own nodes
    clock["now"] = MONDAY_NIGHT
    ok(cp.client.put(f"/nodes/{lab}/contribution", json=window, headers=cp.op))
    assert _slice(cp, bank["id"])["placement"] == {str(lab): 2}

    # Pinning reaches the agent only once the lab's raylet advertises its resource.
    def bank_spec() -> dict[str, object]:
        state = ok(cp.client.get("/agent/v1/desired", headers=own_agent))
        return next(s["spec"] for s in state["slices"] if s["slice_id"] == bank["id"])

    assert bank_spec()["placement"] is None
    ok(cp.client.post("/agent/v1/heartbeat", json={"ray_resources": [f"lineside_node_{own}", f"lineside_node_{lab}"]},
                      headers=own_agent))  # fmt: skip
    assert bank_spec()["placement"] == {f"lineside_node_{lab}": 2}

    # Draining the operator's own node: reserved slices have nowhere to go (the lab is bank-only).
    ok(cp.client.post(f"/nodes/{own}/status", json={"status": "draining"}, headers=cp.op))
    assert _slice(cp, cp.a.ids["slice"])["placement"] == {}
    assert ok(cp.client.get(f"/nodes/{own}", headers=cp.op))["status"] == "drained"
    events = ok(cp.client.get(f"/slices/{cp.a.ids['slice']}/events", headers=cp.a.pm))
    assert {e["kind"] for e in events[:2]} == {"drain", "alert"}
    assert any("no longer eligible" in e["reason"] for e in events[:2])
    alerts = ok(cp.client.get("/alerts", headers=cp.op))
    assert {a["slice_id"] for a in alerts[:2]} == {cp.a.ids["slice"], cp.b.ids["slice"]}  # both tenants' reserved
    assert all("add or undrain nodes" in a["reason"] for a in alerts)
    assert cp.client.get("/alerts", headers=cp.a.pm).status_code == 403
    # Undrain: the reserved slice comes back.
    ok(cp.client.post(f"/nodes/{own}/status", json={"status": "online"}, headers=cp.op))
    assert _slice(cp, cp.a.ids["slice"])["placement"] == {str(own): 1}


def test_priority_and_placement_are_not_mass_assignable(control_plane: ControlPlane) -> None:
    cp = control_plane
    body = {"slug": "x", "line_ids": [cp.a.line_id], "model_version_id": 1, "placement": {"1": 5}}
    assert cp.client.post("/slices", json=body, headers=cp.a.pm).status_code == 422
    window = {"contributed": True, "windows": [{"days": [9], "start": "25:00", "end": "07:00"}]}
    response = cp.client.put("/nodes/1/contribution", json=window, headers=cp.op)
    assert response.status_code == 422 and "weekdays" in response.text
    assert cp.client.put("/nodes/1/contribution", json={"contributed": False}, headers=cp.a.pm).status_code == 403


def test_worker_node_agent_only_reports(control_plane: ControlPlane, tmp_path: object) -> None:
    from pathlib import Path

    from edge_node.agent import Agent, join

    cp = control_plane
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    node = join(cp.client, token, Path(str(tmp_path)) / "worker", ray_address="10.0.0.1:6379")

    def never(*_args: object) -> None:
        raise AssertionError("a worker node's agent applied or deleted a slice")

    worker = Agent(cp.client, node["node_token"], Path(str(tmp_path)) / "worker", apply=never, delete=never,
                   head=False)  # fmt: skip
    assert worker.step() == []
    joined = ok(cp.client.get(f"/nodes/{node['id']}", headers=cp.op))
    assert joined["status"] == "online" and joined["ray_address"] == "10.0.0.1:6379"


def test_a_drain_with_notice_keeps_replicas_until_it_ends_and_undrain_changes_nothing(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    clock = {"now": MONDAY_NOON}
    cp.client.app.state.clock = lambda: clock["now"]  # type: ignore[attr-defined]
    own, own_agent = _node(cp, "own-1")
    ok(cp.client.post("/agent/v1/heartbeat", json={}, headers=own_agent))
    reserved = cp.a.ids["slice"]
    assert _slice(cp, reserved)["placement"] == {str(own): 1}
    generation = _slice(cp, reserved)["generation"]
    # The owner sets a notice of 10 minutes; a drain then leaves the replica running (nowhere else to go).
    lend = {"contributed": False, "notice_s": 600}
    assert ok(cp.client.put(f"/nodes/{own}/contribution", json=lend, headers=cp.op))["notice_s"] == 600
    node = ok(cp.client.post(f"/nodes/{own}/status", json={"status": "draining"}, headers=cp.op))
    assert node["status"] == "draining" and node["held_until"] is not None
    assert _slice(cp, reserved)["placement"] == {str(own): 1}
    assert _slice(cp, reserved)["generation"] == generation  # the agent redeploys nothing
    epoch = int(str(_slice(cp, reserved)["credential_epoch"]))  # nor are its passwords rotated: it serves on
    [alert] = [a for a in ok(cp.client.get("/alerts", headers=cp.op)) if a["slice_id"] == reserved]
    assert "once the notice ends" in alert["reason"] and "add or undrain nodes" in alert["reason"]
    # Undrain within the notice: nothing moved, nothing to redeploy.
    assert ok(cp.client.post(f"/nodes/{own}/status", json={"status": "online"}, headers=cp.op))["held_until"] is None
    assert _slice(cp, reserved)["generation"] == generation
    # Drain again, this time for good: at the notice's end the planner's period moves the replica off.
    ok(cp.client.post(f"/nodes/{own}/status", json={"status": "draining", "notice_s": 60}, headers=cp.op))
    clock["now"] = MONDAY_NOON + timedelta(seconds=59)
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        placement.place_all(session, clock["now"])
    assert _slice(cp, reserved)["placement"] == {str(own): 1}
    assert _slice(cp, reserved)["credential_epoch"] == epoch
    clock["now"] = MONDAY_NOON + timedelta(seconds=60)
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        drained = placement.place_all(session, clock["now"])
        assert drained == {cp.site_id: [own]}
        sites.rotate_after_drains(session, cp.settings, drained)  # as the planner's period does
    assert _slice(cp, reserved)["placement"] == {}
    assert _slice(cp, reserved)["credential_epoch"] == epoch + 1  # it has left: its passwords are void
    assert ok(cp.client.get(f"/nodes/{own}", headers=cp.op))["status"] == "drained"
    [drain] = [e for e in ok(cp.client.get(f"/slices/{reserved}/events", headers=cp.a.pm)) if e["kind"] == "drain"]
    assert "no longer eligible" in drain["reason"]
    too_long = cp.client.post(f"/nodes/{own}/status", json={"status": "draining", "notice_s": 10**9}, headers=cp.op)
    assert too_long.status_code == 422
