"""The head's agent sizes each slice to its node before applying it (issue 16): ONNX Runtime threads per
model replica, measured once per model and shape, remembered across agent restarts, and reported in the
profile. The agent runs against the real control plane app; Ray is the seam left out (a recording ``apply``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edge_node import sizing
from edge_node.agent import Agent, join
from edge_node.profiling import ProfileResult
from tests.integration.cp_fixtures import ControlPlane, RecordedServe, ok
from tests.integration.rollout_streams import fails_every_part, upload


class LinearProfile:
    """Each thread adds a core's worth of frames/s (a heavy model); records the counts it measured."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def __call__(self, _manifest: Path, *, threads: int, batch: int) -> ProfileResult:
        self.asked.append(threads)
        return ProfileResult(frames_per_s_per_replica=150.0 * threads, cold_start_s=0.5)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_agent_gives_a_lone_replica_every_core_once_measured_and_reports_it(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = control_plane
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    node = join(cp.client, token, tmp_path / "agent")
    mine = cp.a.ids["slice"]
    ok(cp.client.post(f"/slices/{mine}/scale", json={"min_replicas": 1, "max_replicas": 1}, headers=cp.a.pm))
    serve = RecordedServe()
    applied, present = serve.applied, serve.present

    def agent(profiler: LinearProfile) -> Agent:
        return Agent(cp.client, node["node_token"], tmp_path / "agent", profiler=profiler, **serve.agent_options())

    cores = os.cpu_count() or 1
    first = LinearProfile()
    agent(first).step()
    [ours] = [s for s in applied if s.tenant == "acme"]
    assert ours.resources.ort_threads == cores  # one replica on the node: it may use every core
    assert cores in first.asked and 1 in first.asked  # measured, not assumed
    # Each count as often as the others (interleaved rounds), and no more: the profile reports the sizing's run.
    assert all(first.asked.count(t) == sizing.ROUNDS for t in first.asked)
    # The profile the planner reads is of that configuration.
    model = ok(cp.client.get(f"/slices/{mine}", headers=cp.a.pm))["model_version_id"]
    profiles = ok(cp.client.get(f"/models/{model}/profiles", headers=cp.a.pm))
    assert any(p["hardware"] == f"cpu x{cores}" for p in profiles), profiles
    # A restarted agent re-applies what Serve lost with the same threads, measuring nothing again.
    sizings = json.loads((tmp_path / "agent" / "sizings.json").read_text())
    assert {"threads": cores, "decode_at": "model"} in sizings.values()  # decoding took no time: the model's
    applied.clear()
    present.clear()
    again = LinearProfile()
    agent(again).step()
    assert [s.resources.ort_threads for s in applied if s.tenant == "acme"] == [cores]
    assert [s.resources.decode_at for s in applied if s.tenant == "acme"] == ["model"]
    assert again.asked == []
    # An agent from before decode_at remembered the threads alone: read as they were, decoding in the model.
    (tmp_path / "agent" / "sizings.json").write_text(json.dumps(dict.fromkeys(sizings, cores)))
    applied.clear()
    present.clear()
    agent(again).step()
    assert [(s.resources.ort_threads, s.resources.decode_at) for s in applied if s.tenant == "acme"] == [
        (cores, "model")
    ]
    assert again.asked == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_rollouts_candidate_is_sized_and_profiled_before_it_is_promoted(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Regression (CI, 1 December): once the demo's rollout promoted its fitted model, the plan preview said
    "the model has no measured profile yet" until the agent measured the new model. The agent now measures the
    candidate while it rolls out, and the promoted slice reuses that sizing without measuring again."""
    cp = control_plane
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    node = join(cp.client, token, tmp_path / "agent")
    serve = RecordedServe()
    profiler = LinearProfile()
    agent = Agent(cp.client, node["node_token"], tmp_path / "agent", profiler=profiler, **serve.agent_options())
    agent.step()
    candidate = upload(cp, fails_every_part(), "fails-every-part", "2.0.0")
    body = {"slice_id": cp.a.ids["slice"], "model_version_id": candidate["id"]}
    rollout = ok(cp.client.post("/rollouts", json=body, headers=cp.a.it), 201)
    agent.step()
    profiles = ok(cp.client.get(f"/models/{candidate['id']}/profiles", headers=cp.a.pm))
    assert [p["hardware"] for p in profiles] and all(p["frames_per_s_per_replica"] > 0 for p in profiles)
    while ok(cp.client.get(f"/rollouts/{rollout['id']}", headers=cp.a.pm))["state"] != "completed":
        ok(cp.client.post(f"/rollouts/{rollout['id']}/advance", headers=cp.a.pm))
    profiler.asked.clear()
    serve.applied.clear()
    agent.step()
    [promoted] = [s for s in serve.applied if s.name == f"t{cp.a.tenant_id}-inspect"]
    assert promoted.resources.ort_threads > 0 and profiler.asked == []  # the candidate's sizing, kept
