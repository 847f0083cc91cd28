"""The rollout API on both databases: who may start and steer a rollout, what each tenant sees, the typed
refusals of illegal moves, the steps as the agent receives them, and a rollback decided from the ingress's
reports as the control plane's telemetry handler stores them."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from sqlmodel import Session

from contracts import wire
from contracts.slice_spec import ModelCounts, RolloutReport, SliceSpec
from control_plane import telemetry
from edge_node.agent import Agent, join
from tests.integration.cp_fixtures import ControlPlane, ok
from tests.integration.rollout_streams import fails_every_part, upload
from tests.integration.test_cp_agent_ray import quick_profile


def _candidate(cp: ControlPlane) -> dict:
    return upload(cp, fails_every_part(), "fails-every-part", "2.0.0")


def _start(cp: ControlPlane, model_id: int, **body: object) -> dict:
    payload = {"slice_id": cp.a.ids["slice"], "model_version_id": model_id, **body}
    return ok(cp.client.post("/rollouts", json=payload, headers=cp.a.it), 201)


def _desired(cp: ControlPlane) -> dict:
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    body = {"token": token, "hostname": "edge-1", "cpus": 4, "memory_mb": 8192}
    node = ok(cp.client.post("/agent/v1/join", json=body), 201)
    headers = {"Authorization": f"Bearer {node['node_token']}"}
    slices = ok(cp.client.get("/agent/v1/desired", headers=headers))["slices"]
    return next(s for s in slices if s["slice_id"] == cp.a.ids["slice"])


def test_plant_managers_and_factory_it_steer_their_own_rollouts_only(control_plane: ControlPlane) -> None:
    cp = control_plane
    model = _candidate(cp)
    rollout = _start(cp, model["id"])
    assert (rollout["stage"], rollout["state"], rollout["step"]) == ("shadow", "running", 0)
    assert [s["stage"] for s in rollout["steps"]] == ["shadow", "canary", "canary", "full"]
    assert ok(cp.client.get(f"/rollouts/{rollout['id']}", headers=cp.a.pm))["id"] == rollout["id"]
    assert [r["id"] for r in ok(cp.client.get("/rollouts", headers=cp.op))] == [rollout["id"]]

    # The other tenant: a 404 like a missing rollout, whatever it tries; and its list is empty.
    for method, path in (("get", f"/rollouts/{rollout['id']}"), ("post", f"/rollouts/{rollout['id']}/advance"),
                         ("post", f"/rollouts/{rollout['id']}/abort")):  # fmt: skip
        for headers in (cp.b.pm, cp.b.it):
            assert getattr(cp.client, method)(path, headers=headers).status_code == 404
    assert ok(cp.client.get("/rollouts", headers=cp.b.pm)) == []
    foreign = {"slice_id": cp.a.ids["slice"], "model_version_id": model["id"]}
    assert cp.client.post("/rollouts", json=foreign, headers=cp.b.pm).status_code == 404
    own_slice_their_model = {"slice_id": cp.b.ids["slice"], "model_version_id": model["id"]}
    assert cp.client.post("/rollouts", json=own_slice_their_model, headers=cp.b.pm).status_code == 404

    # Operators read but do not steer a tenant's line.
    refused = cp.client.post(f"/rollouts/{rollout['id']}/abort", headers=cp.op)
    assert refused.status_code == 403 and "plant_manager or factory_it" in refused.json()["detail"]


def test_illegal_moves_are_typed_refusals_that_say_what_to_do(control_plane: ControlPlane) -> None:
    cp = control_plane
    model = _candidate(cp)
    current = ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))["model_version_id"]
    same = cp.client.post("/rollouts", json={"slice_id": cp.a.ids["slice"], "model_version_id": current},
                          headers=cp.a.pm)  # fmt: skip
    assert same.status_code == 422 and "already slice inspect's model" in same.json()["detail"]
    falling = {"slice_id": cp.a.ids["slice"], "model_version_id": model["id"], "canary_shares": [0.5, 0.2]}
    assert cp.client.post("/rollouts", json=falling, headers=cp.a.pm).status_code == 422
    typo = {"slice_id": cp.a.ids["slice"], "model_version_id": model["id"], "canary_share": [0.5]}
    assert "canary_share" in cp.client.post("/rollouts", json=typo, headers=cp.a.pm).text

    first = _start(cp, model["id"])
    second = cp.client.post("/rollouts", json={"slice_id": cp.a.ids["slice"], "model_version_id": model["id"]},
                            headers=cp.a.pm)  # fmt: skip
    assert second.status_code == 409
    assert f"already has rollout {first['id']} running (shadow): advance or abort it first" in second.json()["detail"]

    aborted = ok(cp.client.post(f"/rollouts/{first['id']}/abort", headers=cp.a.pm))
    assert aborted["state"] == "aborted" and aborted["finished_at"] is not None
    for move in ("advance", "abort"):
        again = cp.client.post(f"/rollouts/{first['id']}/{move}", headers=cp.a.pm)
        assert again.status_code == 409 and again.json()["code"] == "illegal_transition"
        assert "is aborted" in again.json()["detail"] and "Start a new rollout" in again.json()["detail"]
    assert _start(cp, model["id"])["state"] == "running"  # the slice is free for another


def test_steps_reach_the_agent_and_the_last_makes_the_candidate_the_slices_model(control_plane: ControlPlane) -> None:
    cp = control_plane
    model = _candidate(cp)
    before = _desired(cp)
    assert "rollout" not in before["spec"] and before.get("candidate") is None
    rollout = _start(cp, model["id"], canary_shares=[0.25])
    desired = _desired(cp)
    assert desired["generation"] > before["generation"]
    assert desired["candidate"]["sha256"] == model["sha256"]
    assert desired["model"]["sha256"] == before["model"]["sha256"]  # the current model is untouched
    assert (desired["spec"]["rollout"]["stage"], desired["spec"]["rollout"]["rollout_id"]) == ("shadow", rollout["id"])

    canary = ok(cp.client.post(f"/rollouts/{rollout['id']}/advance", headers=cp.a.pm))
    assert (canary["stage"], canary["share"]) == ("canary", 0.25)
    assert canary["history"][0]["stage"] == "shadow" and "advanced by user" in canary["history"][0]["ended"]
    assert (_desired(cp)["spec"]["rollout"]["stage"], _desired(cp)["spec"]["rollout"]["share"]) == ("canary", 0.25)

    done = ok(cp.client.post(f"/rollouts/{rollout['id']}/advance", headers=cp.a.it))
    assert done["state"] == "completed"
    after = _desired(cp)
    assert after["model"]["sha256"] == model["sha256"] and "rollout" not in after["spec"]
    assert ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))["model_version_id"] == model["id"]
    events = ok(cp.client.get(f"/slices/{cp.a.ids['slice']}/events", headers=cp.a.pm))
    reasons = [e["reason"] for e in events if e["kind"] == "rollout"][::-1]  # oldest first
    assert [r.split(": ")[1].split(" ")[0] for r in reasons] == ["started", "shadow", "completed"], reasons


def _report(rollout: dict, *, current_fails: int, candidate_fails: int, frames: int = 60) -> bytes:
    def counted(fails: int) -> ModelCounts:
        histogram = [0] * (len(wire.LATENCY_BUCKETS_MS) + 1)
        histogram[wire.latency_bucket(20)] = frames
        return ModelCounts(frames=frames, fails=fails, latency_ms_histogram=histogram)

    now = time.time()
    report = RolloutReport(rollout_id=rollout["id"], step=rollout["step"], replica="ingress-0", start=now - 2,
                           end=now, current=counted(current_fails), candidate=counted(candidate_fails))  # fmt: skip
    return report.model_dump_json().encode()


def test_the_ingress_reports_roll_a_failing_canary_back(control_plane: ControlPlane) -> None:
    cp = control_plane
    model = _candidate(cp)
    rollout = _start(cp, model["id"], shadow=False, canary_shares=[0.5], min_frames=50)
    topic = wire.telemetry_topic("acme", "line-1", f"t{cp.a.tenant_id}-inspect")
    engine = cp.client.app.state.engine  # type: ignore[attr-defined]
    healthy = _report(rollout, current_fails=1, candidate_fails=2)
    with Session(engine) as session:
        counted = telemetry.ingest(session, cp.site_id, [(topic, healthy), (topic, healthy)], keep_failed=5)
    assert counted.rollout == 1  # the redelivered copy counts once
    shown = ok(cp.client.get(f"/rollouts/{rollout['id']}", headers=cp.a.pm))
    assert shown["state"] == "running" and shown["comparison"]["candidate"]["frames"] == 60

    with Session(engine) as session:
        telemetry.ingest(session, cp.site_id, [(topic, _report(rollout, current_fails=1, candidate_fails=60))],
                         keep_failed=5)  # fmt: skip
    shown = ok(cp.client.get(f"/rollouts/{rollout['id']}", headers=cp.a.pm))
    assert shown["state"] == "rolled_back" and "fail rate 51.7% vs current 1.7%" in shown["reason"], shown
    assert shown["history"][-1]["comparison"]["candidate"]["frames"] == 120
    assert "rollout" not in _desired(cp)["spec"]  # back on the current model alone
    late = _report(rollout, current_fails=0, candidate_fails=0)  # a report still on its way: ignored
    with Session(engine) as session:
        assert telemetry.ingest(session, cp.site_id, [(topic, late)], keep_failed=5).rollout == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_agent_applies_a_rollout_with_the_candidates_file_and_keeps_its_ingress_login(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """A rollout's start, step and end change nothing the ingress was started with: the agent keeps its
    broker login (a new one would roll the ingress over, and robots would meet two routings at once)."""
    cp = control_plane
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    node = join(cp.client, token, tmp_path / "agent")
    applied: list[SliceSpec] = []
    present: set[str] = set()

    def record(spec: SliceSpec) -> None:
        applied.append(spec)
        present.add(spec.name)

    agent = Agent(cp.client, node["node_token"], tmp_path / "agent", apply=record, applications=lambda: set(present),
                  status=lambda _name: {"status": "RUNNING", "deployments": {}}, ray_resources=list,
                  profiler=quick_profile, forget=lambda _name: None)  # fmt: skip
    agent.step()
    mine = next(s for s in applied if s.name == f"t{cp.a.tenant_id}-inspect")
    model = _candidate(cp)
    rollout = _start(cp, model["id"])
    for move in ("start", "advance", "abort"):
        if move != "start":
            ok(cp.client.post(f"/rollouts/{rollout['id']}/{move}", headers=cp.a.pm))
        applied.clear()
        agent.step()
        [spec] = applied
        assert spec.ingress_slot == mine.ingress_slot and spec.manifest == mine.manifest, move
        if move == "abort":
            assert spec.rollout is None
            continue
        assert spec.rollout is not None and spec.rollout.manifest is not None
        assert json.loads(spec.rollout.manifest.read_text())["version"] == model["version"]
        on_disk = spec.rollout.manifest.parent / json.loads(spec.rollout.manifest.read_text())["file"]
        assert hashlib.sha256(on_disk.read_bytes()).hexdigest() == model["sha256"]
