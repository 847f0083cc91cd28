"""The edge agent against the real control plane app, a real Ray Serve and a dynsec Mosquitto:
a robot created through the API gets verdicts from a slice the agent started."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from contracts.slice_spec import SliceSpec
from contracts.wire import Result
from edge_node import cluster
from edge_node.agent import Agent, join
from edge_node.profiling import ProfileResult
from robots.sdk import RobotClient
from tests.integration.cp_fixtures import ControlPlane, ok


def quick_profile(_manifest: Path, *, threads: int, batch: int) -> ProfileResult:
    """Profiling is tested on its own; here it would only slow the heartbeats the test checks."""
    return ProfileResult(frames_per_s_per_replica=100.0, cold_start_s=1.0)


def _robot(cp: ControlPlane, creds: dict[str, object]) -> RobotClient:
    return RobotClient(
        cp.broker.host, cp.broker.port, tenant="acme", line="line-1", robot="cam-1",
        username=str(creds["mqtt_username"]), password=str(creds["mqtt_password"]), client_id=str(creds["client_id"]),
    ).connect()  # fmt: skip


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_agent_serves_desired_slices_idempotently_and_offline(
    ray_cluster: int, control_plane: ControlPlane, tmp_path: Path, part_frames: list
) -> None:
    cp = control_plane
    frames = {sample.label: sample.data for sample in part_frames}
    ok(cp.client.delete(f"/slices/{cp.b.ids['slice']}", headers=cp.b.pm))  # one slice fits 2 test CPUs
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    node = join(cp.client, token, tmp_path / "agent")
    applied: list[str] = []

    def counting_apply(spec: SliceSpec) -> None:
        applied.append(spec.name)
        cluster.apply_slice(spec)

    def killed_mid_apply(spec: SliceSpec) -> None:
        cluster.apply_slice(spec)  # Serve took the change...
        raise SystemExit("agent killed")  # ...and the agent died before recording it

    app_name = f"t{cp.a.tenant_id}-inspect"
    try:
        with pytest.raises(SystemExit):
            Agent(
                cp.client, node["node_token"], tmp_path / "agent", apply=killed_mid_apply, profiler=quick_profile
            ).step()
        # A restarted agent (state from disk only) converges: it re-applies once, then is healthy.
        agent = Agent(cp.client, node["node_token"], tmp_path / "agent", apply=counting_apply, profiler=quick_profile)
        reports = agent.step()
        assert applied == [app_name] and reports[0].healthy, reports
        slice_a = ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))
        assert slice_a["status"] == "running" and slice_a["actual"]["replicas"]["model"] == {"RUNNING": 1}
        assert ok(cp.client.get(f"/slices/{cp.b.ids['slice']}", headers=cp.b.pm))["status"] == "deleted"
        assert ok(cp.client.get(f"/nodes/{node['id']}", headers=cp.op))["status"] == "online"

        creds = ok(cp.client.post(f"/robots/{cp.a.ids['robot']}/rotate", headers=cp.a.it))
        robot = _robot(cp, creds)
        reply = robot.inspect(frames["good"], timeout_s=20)
        assert isinstance(reply, Result) and reply.verdict == "pass", reply
        robot.close()

        agent.step()
        assert applied == [app_name], "a second pass over the same desired state re-applied the slice"

        # Control plane gone, agent restarted, Serve lost the application: the cache brings it back.
        cluster.delete_slice(app_name)
        offline = Agent(httpx.Client(base_url="http://127.0.0.1:9", timeout=1.0), node["node_token"],
                        tmp_path / "agent", apply=counting_apply, profiler=quick_profile)  # fmt: skip
        offline.step()
        assert applied == [app_name, app_name] and app_name in cluster.applications()
        robot = _robot(cp, creds)
        reply = robot.inspect(frames["crack"], timeout_s=20)  # served from the cached desired state
        assert isinstance(reply, Result) and (reply.verdict, reply.defect_class) == ("fail", "crack"), reply
        robot.close()

        # Released capacity: the agent deletes the application and the slice ends deleted.
        ok(cp.client.delete(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))
        agent.step()
        assert app_name not in cluster.applications()
        assert ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))["status"] == "deleted"
    finally:
        if app_name in cluster.applications():
            cluster.delete_slice(app_name)
